"""kubeadm's certificate-key protocol (its copycerts phase): how a server that joins gets the
cluster's shared keys, and nothing else does.

    the operator's host, `k4s token create --control-plane`:
        a bootstrap token (in addons.CONTROL_PLANE_GROUP) and a certificate key of its own (32
        random bytes, hex), handed to the cluster as an upload request: a Secret of type
        REQUEST_TYPE, owned by the token's Secret, that only cluster admins can read
    a server, at its approver's next round (serve_requests):
        each shared file sealed with AES-256-GCM under that key into kube-system/kubeadm-certs-<id>
        (kubeadm's data keys and cipher: a 12-byte nonce, then the sealed bytes), and a Role and
        RoleBinding that let that one token read that one Secret, all three owned by the token's
        Secret; the request deleted. When the token goes (spent, expired or deleted), the
        garbage collector takes them with it.
    the joining server (k4s.cluster.join.join_control_plane):
        discovery with the token, then its Secret read with the token and opened with the key
        from its join segment; the CAs and keys written; then it issues its own leaves and
        joins etcd (k4s.cluster.etcdmembers).

Unlike kubeadm's one kubeadm-certs Secret and one key for every join in a two-hour window,
each join has its own key and Secret: one machine, one secret, as a worker's token is; two
servers may join at once.

What is shared: the cluster, etcd, front-proxy and kubelet-serving CAs (certificate and key),
the service-account key pair, the encryption config of Secrets at rest (each apiserver reads
what any other wrote), and the operator CA's certificate. Without the key the Secret is noise;
the key never travels with the token in anything public (it is in the machine's join segment).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from k4s import log
from k4s.cluster import certs, kubeapi
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

NAMESPACE = "kube-system"
PREFIX = "kubeadm-certs-"
SECRETS = f"/api/v1/namespaces/{NAMESPACE}/secrets"
REQUEST_TYPE = "k4s.io/upload-certs"
REQUEST_KEY = "certificate-key"
KEY_BYTES = 32  # AES-256, kubeadm's CertificateKeySize
NONCE_BYTES = 12


def shared(files: certs.Files) -> list[tuple[str, Path, bool]]:
    """(data key in kubeadm-certs, file, required): kubeadm's names (a '/' becomes '-'), and
    k4s's own beside them."""
    out: list[tuple[str, Path, bool]] = []
    for ca in certs.CAS:
        out += [(f"{ca.name.replace('/', '-')}.crt", files.crt(ca), True),
                (f"{ca.name.replace('/', '-')}.key", files.key(ca), True)]
    return out + [("sa.key", files.sa_key, True), ("sa.pub", files.sa_pub, True),
                  (certs.ENCRYPTION_CONFIG, files.encryption_config, True),
                  (f"{certs.OPERATOR_CA}.crt", files.crt(certs.OPERATOR_CA), False)]


def new_key() -> str:
    """A certificate key: 32 bytes of the OS's CSPRNG, as 64 hex digits (kubeadm's form)."""
    return secrets.token_hex(KEY_BYTES)


def seal(data: bytes, key_hex: str) -> bytes:
    """kubeadm's cryptoutil.EncryptBytes: AES-GCM, a random nonce first."""
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = secrets.token_bytes(NONCE_BYTES)
    return nonce + AESGCM(bytes.fromhex(key_hex)).encrypt(nonce, data, None)


def unseal(blob: bytes, key_hex: str) -> bytes | None:
    """The plaintext, or None when the key is not the one it was sealed with (or it was altered)."""
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    if len(blob) < NONCE_BYTES + 16:
        return None
    try:
        return AESGCM(bytes.fromhex(key_hex)).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], None)
    except InvalidTag:
        return None


def owner(token_secret: dict[str, Any]) -> dict[str, Any]:
    """An ownerReference to a bootstrap token's Secret: what goes when the token goes."""
    meta = token_secret["metadata"]
    return {"apiVersion": "v1", "kind": "Secret", "name": meta["name"], "uid": meta["uid"]}


def secret_name(token_id: str) -> str:
    return PREFIX + token_id


def token_id_of(owned_by: dict[str, Any]) -> str:
    return str(owned_by["name"]).removeprefix("bootstrap-token-")


def sealed_secret(files: certs.Files, key_hex: str, owned_by: dict[str, Any]) -> dict[str, Any]:
    """The sealed files for the token `owned_by` names. Imports cryptography: run it in a child."""
    data = {}
    for name, path, required in shared(files):
        try:
            data[name] = base64.b64encode(seal(path.read_bytes(), key_hex)).decode()
        except FileNotFoundError:
            if required:
                raise K4sError(f"cannot share {path}: it is missing", hint="is this node a server?") from None
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(token_id_of(owned_by)), "namespace": NAMESPACE,
                         "ownerReferences": [owned_by], "labels": {"app.kubernetes.io/managed-by": "k4s"}},
            "data": data}


def reader(owned_by: dict[str, Any]) -> list[dict[str, Any]]:
    """A Role to get that one Secret and its binding to that one token's user (kubeadm binds a
    role for kubeadm-certs to every default-node-token holder), owned by the token's Secret."""
    token_id = token_id_of(owned_by)
    rbac = "rbac.authorization.k8s.io"
    meta = {"name": f"k4s:{secret_name(token_id)}", "namespace": NAMESPACE, "ownerReferences": [owned_by],
            "labels": {"app.kubernetes.io/managed-by": "k4s"}}
    return [{"apiVersion": f"{rbac}/v1", "kind": "Role", "metadata": meta,
             "rules": [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": [secret_name(token_id)],
                        "verbs": ["get"]}]},
            {"apiVersion": f"{rbac}/v1", "kind": "RoleBinding", "metadata": meta,
             "roleRef": {"apiGroup": rbac, "kind": "Role", "name": meta["name"]},
             "subjects": [{"apiGroup": rbac, "kind": "User", "name": f"system:bootstrap:{token_id}"}]}]


class WrongKey(K4sError):
    pass


def opened(secret: dict[str, Any], key_hex: str) -> dict[str, bytes]:
    """kubeadm-certs opened with the certificate key: {data key: plaintext}. WrongKey when the key
    is not the one it was sealed with, K4sError when a required file is missing."""
    data = secret.get("data") or {}
    out: dict[str, bytes] = {}
    for name, _, required in shared(certs.Files(Path("/"), Path("/"))):
        if name not in data:
            if required:
                raise K4sError(f"{secret['metadata']['name']} holds no {name}", hint="was it made by a k4s server? make a new "
                               "control-plane join with `k4s token create --control-plane`")
            continue
        try:
            blob = base64.b64decode(data[name], validate=True)
        except ValueError:
            blob = b""
        plain = unseal(blob, key_hex)
        if plain is None:
            raise WrongKey(f"the certificate key does not open {secret['metadata']['name']} ({name})",
                           hint="the key and the token must come from the same `k4s token create --control-plane`")
        out[name] = plain
    return out


def write(files: certs.Files, blobs: dict[str, bytes]) -> None:
    """The shared files where this node's PKI keeps them: keys 0600, certificates 0644."""
    for name, path, _ in shared(files):
        if name in blobs:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, blobs[name], 0o644 if name.endswith((".crt", ".pub")) else 0o600)


# --- the operator's request, and the server that answers it ------------------------------------

def request(token_secret: dict[str, Any], key_hex: str) -> dict[str, Any]:
    """The upload request `k4s token create --control-plane` makes: the key, for a server to seal
    the shared files with; owned by the token's Secret."""
    token_id = token_secret["metadata"]["name"].removeprefix("bootstrap-token-")
    return {"apiVersion": "v1", "kind": "Secret", "type": REQUEST_TYPE,
            "metadata": {"name": f"k4s-upload-certs-{token_id}", "namespace": NAMESPACE,
                         "ownerReferences": [owner(token_secret)]},
            "stringData": {REQUEST_KEY: key_hex}}


def serve_requests(client: kubeapi.Client, files: certs.Files, call_in_child: Callable[..., Any]) -> int:
    """Answer each pending upload request (a server's approver round): the files sealed with its
    key, readable by its token alone; the request deleted. A request whose token is gone is deleted unanswered. The count
    answered."""
    items = client.json("GET", f"{SECRETS}?fieldSelector=type%3D{REQUEST_TYPE.replace('/', '%2F')}").get("items", [])
    answered = 0
    for req in items:
        name = req["metadata"]["name"]
        refs = req["metadata"].get("ownerReferences") or []
        key_hex = base64.b64decode((req.get("data") or {}).get(REQUEST_KEY, "")).decode(errors="replace")
        token = _get(client, f"{SECRETS}/{refs[0]['name']}") if refs else None
        if token is not None and len(key_hex) == 2 * KEY_BYTES:
            sealed = call_in_child(lambda k=key_hex, t=token: sealed_secret(files, k, owner(t)), 60)
            for obj in (sealed, *reader(owner(token))):
                client.apply(obj)
            answered += 1
            log.event("certs", "uploaded", secret=f"{NAMESPACE}/{sealed['metadata']['name']}")
        else:
            log.event("certs", "upload-refused", level="warn", request=name,
                      reason="its token is gone" if token is None else "the key is not 64 hex digits")
        try:
            client.json("DELETE", f"{SECRETS}/{name}")
        except kubeapi.APIError as e:
            if e.status != 404:
                raise
    return answered


def _get(client: kubeapi.Client, path: str) -> dict[str, Any] | None:
    try:
        return client.json("GET", path)
    except kubeapi.APIError as e:
        if e.status == 404:
            return None
        raise
