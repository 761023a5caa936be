"""kubeadm's certificate-key protocol (its copycerts phase): how a server that joins gets the
cluster's shared keys, and nothing else does.

    the operator's host, `k4s token create --control-plane`:
        a bootstrap token (in certs.CONTROL_PLANE_GROUP), and an upload request: a Secret of
        type REQUEST_TYPE, owned by the token's Secret, holding a one-time X25519 public key
    a server, at its approver's next round (serve_requests):
        a new certificate key (32 random bytes, hex); each shared file sealed with AES-256-GCM
        under it into kube-system/kubeadm-certs-<id> (kubeadm's data keys and cipher: a 12-byte
        nonce, then the sealed bytes), a Role and RoleBinding that let that one token read that
        one Secret, all three owned by the token's Secret; and the key itself sealed to the
        request's public key (HPKE) in the request. The operator's host opens it, deletes the
        request and writes the key into the machine's join. When the token goes (spent, expired
        or deleted), the garbage collector takes the rest with it.
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
the key is never in the cluster in the clear, nor in anything public (it is in the machine's
join segment).
"""

from __future__ import annotations

import base64
import re
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
HEX_KEY = re.compile(r"[0-9a-f]{64}")
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


def request_name(token_id: str) -> str:
    """The upload request's name: the operator's host makes it and reads the answer there."""
    return f"k4s-upload-certs-{token_id}"


def token_id_of(owned_by: dict[str, Any]) -> str:
    return str(owned_by["name"]).removeprefix("bootstrap-token-")


def sealed_data(files: certs.Files, key_hex: str) -> dict[str, str]:
    """Each shared file sealed with the key (base64), by its kubeadm-certs name. Imports
    cryptography: run it in a child."""
    data = {}
    for name, path, required in shared(files):
        try:
            data[name] = base64.b64encode(seal(path.read_bytes(), key_hex)).decode()
        except FileNotFoundError:
            if required:
                raise K4sError(f"cannot share {path}: it is missing", hint="is this node a server?") from None
    return data


def sealed_secret(files: certs.Files, key_hex: str, owned_by: dict[str, Any]) -> dict[str, Any]:
    """The sealed files for the token `owned_by` names. Imports cryptography: run it in a child."""
    return {"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": secret_name(token_id_of(owned_by)), "namespace": NAMESPACE,
                         "ownerReferences": [owned_by], "labels": {"app.kubernetes.io/managed-by": "k4s"}},
            "data": sealed_data(files, key_hex)}


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


SAME_JOIN = "the key and the token must come from the same `k4s token create --control-plane`"


def opened(secret: dict[str, Any], key_hex: str, hint: str = SAME_JOIN) -> dict[str, bytes]:
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
            raise WrongKey(f"the certificate key does not open {secret['metadata']['name']} ({name})", hint=hint)
        out[name] = plain
    return out


def write(files: certs.Files, blobs: dict[str, bytes]) -> None:
    """The shared files where this node's PKI keeps them: keys 0600, certificates 0644."""
    for name, path, _ in shared(files):
        if name in blobs:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, blobs[name], 0o644 if name.endswith((".crt", ".pub")) else 0o600)


# --- the operator's request, and the server that answers it ------------------------------------
#
# The certificate key never enters the cluster in the clear: the request holds the operator's
# one-time X25519 public key, and the server that answers makes the key, seals the files with
# it, and hands it back sealed to that public key (HPKE, RFC 9180: X25519, HKDF-SHA256,
# AES-256-GCM, its `info` naming the token). Whoever reads Secrets sees a public key and two
# ciphertexts. Making the request takes creating a Secret in kube-system, which is a cluster
# admin's right (with it one can mint any token and so become any identity anyway).

HPKE_INFO = b"k4s certificate key for token "
WRAPPED_KEY = "wrapped-key"
PUBLIC_KEY = "public-key"


def _suite():  # type: ignore[no-untyped-def]
    from cryptography.hazmat.primitives import hpke

    return hpke.Suite(hpke.KEM.X25519, hpke.KDF.HKDF_SHA256, hpke.AEAD.AES_256_GCM)


def request(token_secret: dict[str, Any], public_key: bytes) -> dict[str, Any]:
    """The upload request `k4s token create --control-plane` makes: its one-time public key, for
    the answer; owned by the token's Secret."""
    token_id = token_id_of(token_secret["metadata"])
    return {"apiVersion": "v1", "kind": "Secret", "type": REQUEST_TYPE,
            "metadata": {"name": request_name(token_id), "namespace": NAMESPACE,
                         "ownerReferences": [owner(token_secret)]},
            "data": {PUBLIC_KEY: base64.b64encode(public_key).decode()}}


def new_request_key() -> tuple[Any, bytes]:
    """The operator's one-time X25519 key pair: (private key, raw public key)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

    private = X25519PrivateKey.generate()
    return private, private.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def wrap_key(key_hex: str, public_key: bytes, label: str) -> bytes:
    """The key sealed to a one-time public key; label (a token id, or etcdsnapshot.LABEL) is bound in."""
    from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

    return _suite().encrypt(key_hex.encode(), X25519PublicKey.from_public_bytes(public_key), info=HPKE_INFO + label.encode())


def unwrap_key(answer: dict[str, Any], private_key: Any, token_id: str) -> str | None:
    """The certificate key from a server's answer (the request, updated), or None before it answers."""
    wrapped = (answer.get("data") or {}).get(WRAPPED_KEY)
    if not wrapped:
        return None
    return unwrapped(wrapped, private_key, token_id, f"the server's answer for token {token_id}",
                     "delete the token and make a new join")


def unwrapped(wrapped_b64: str, private_key: Any, label: str, what: str, remedy: str) -> str:
    """wrap_key undone with the one-time private key; K4sError when it does not open or is not a key."""
    from cryptography.exceptions import InvalidTag

    try:
        key = _suite().decrypt(base64.b64decode(wrapped_b64), private_key, info=HPKE_INFO + label.encode()).decode()
    except (InvalidTag, ValueError) as e:
        raise K4sError(f"{what} does not open with this request's key", hint=f"it was altered: {remedy}") from e
    if not HEX_KEY.fullmatch(key):
        raise K4sError(f"{what} is not a certificate key", hint=remedy)
    return key


def answer(files: certs.Files, token_secret: dict[str, Any], public_key: bytes) -> dict[str, Any]:
    """A new certificate key, the files sealed with it, and the key sealed to the operator's public
    key: {"sealed": the Secret, "wrapped": base64}. Imports cryptography: run it in a child."""
    key_hex = new_key()
    token_id = token_id_of(token_secret["metadata"])
    return {"sealed": sealed_secret(files, key_hex, owner(token_secret)),
            "wrapped": base64.b64encode(wrap_key(key_hex, public_key, token_id)).decode()}


def refusal(token: dict[str, Any] | None, public_key: bytes, now: float) -> str | None:
    """Why a request must not be answered, or None: its owner must be a live control-plane token
    (a bootstrap token's Secret, in CONTROL_PLANE_GROUP, not expired) and its key an X25519 one."""
    import datetime as dt

    if token is None:
        return "its token is gone"
    if token.get("type") != "bootstrap.kubernetes.io/token":
        return "its owner is not a bootstrap token"
    data = {k: base64.b64decode(v).decode(errors="replace") for k, v in (token.get("data") or {}).items()}
    if certs.CONTROL_PLANE_GROUP not in data.get("auth-extra-groups", "").split(","):
        return "its token is not a control-plane token"
    try:
        expires = dt.datetime.strptime(data.get("expiration", ""), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=dt.UTC)
    except ValueError:
        return "its token has no expiry"
    if expires.timestamp() <= now:
        return "its token has expired"
    if len(public_key) != 32:
        return "its public key is not an X25519 key"
    return None


def serve_requests(client: kubeapi.Client, files: certs.Files, call_in_child: Callable[..., Any]) -> int:
    """Answer each pending upload request (a server's approver round): the files sealed under a new
    key, readable by the request's token alone, and the key sealed to the request's public key in
    the request itself (the operator's host reads and deletes it). A request that must not be
    answered is deleted with a line saying why; a token that already has its sealed files is not
    given new ones. The count answered."""
    import time

    items = client.json("GET", f"{SECRETS}?fieldSelector=type%3D{REQUEST_TYPE.replace('/', '%2F')}").get("items", [])
    answered = 0
    for req in items:
        name = req["metadata"]["name"]
        data = req.get("data") or {}
        if WRAPPED_KEY in data:
            continue  # answered: the operator's host takes it from here
        refs = req["metadata"].get("ownerReferences") or []
        try:
            public_key = base64.b64decode(data.get(PUBLIC_KEY, ""), validate=True)
        except ValueError:
            public_key = b""
        token = client.get_or_none(f"{SECRETS}/{refs[0]['name']}") if refs and refs[0].get("kind") == "Secret" else None
        why = refusal(token, public_key, time.time())
        if why is None and client.get_or_none(f"{SECRETS}/{secret_name(token_id_of(owner(token)))}") is not None:  # type: ignore[arg-type]
            why = "its token's sealed files exist already (one answer per join)"
        if why is not None:
            log.event("certs", "upload-refused", level="warn", request=name, reason=why)
            client.delete_or_none(f"{SECRETS}/{name}")
            continue
        try:  # one request that fails does not stop the others; it is tried again next round
            made = call_in_child(lambda t=token, k=public_key: answer(files, t, k), 60)
            for obj in (made["sealed"], *reader(owner(token))):  # type: ignore[arg-type]
                client.apply(obj)
            req["data"] = {**data, WRAPPED_KEY: made["wrapped"]}
            client.json("PUT", f"{SECRETS}/{name}", req)
        except (OSError, K4sError) as e:
            log.event("certs", "upload-failed", level="warn", request=name, error=str(e))
            continue
        answered += 1
        log.event("certs", "uploaded", secret=f"{NAMESPACE}/{made['sealed']['metadata']['name']}")
    return answered
