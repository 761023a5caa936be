"""Joining a cluster as a worker, with kubeadm's protocol and nothing k4s-only.

    k4s.server  k4s.token=<id>.<secret>  k4s.ca-hash=sha256:<hex>
      1. discovery: GET cluster-info from kube-public (anonymous; the one object the
         server lets anyone read). Its kubeconfig must carry a JWS signature made
         with the token (the controller-manager's bootstrapsigner signs it for every
         live token), and its CA's public key must hash to the pinned ca-hash. Only
         then is the CA trusted, and cluster-info is read again over verified TLS.
      2. TLS bootstrap: a CertificateSigningRequest for system:node:<name>, made with
         the token (group system:bootstrappers), which the controller-manager approves
         and signs. The kubelet then rotates that certificate itself.

The token is the only secret a worker gets: it expires, and it can only read
cluster-info and create CSRs. The worker never holds a CA key. Everything here
runs in a child (k4s.cluster.server): PID 1 never imports cryptography.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import ssl
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from k4s import events, log
from k4s.cluster import addons, certs, kubeapi
from k4s.cluster.components import apiserver, kubelet
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

NODE_CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
T = TypeVar("T")
HINT_NEW_TOKEN = "make a new one with `k4s token create` on the operator's host and boot with its line"


class Refused(K4sError):
    """The cluster said no (or is not the one pinned): retrying cannot help."""


@dataclass(frozen=True)
class Token:
    id: str
    secret: str

    @classmethod
    def parse(cls, text: str) -> Token:
        tid, _, secret = text.partition(".")
        return cls(tid, secret)

    @property
    def bearer(self) -> str:
        return f"{self.id}.{self.secret}"


def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def b64url(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def jws_matches(content: str, detached: str, token: Token) -> bool:
    """A detached compact JWS (header..signature), HS256 keyed with the token's secret, over
    content: what k8s.io/cluster-bootstrap's ComputeDetachedSignature makes. The HMAC is the
    standard library's; the comparison is constant-time."""
    parts = detached.split(".")
    if len(parts) != 3 or parts[1]:
        return False
    try:
        header = json.loads(b64url_decode(parts[0]))
        signature = b64url_decode(parts[2])
    except (ValueError, binascii.Error):
        return False
    if not isinstance(header, dict) or header.get("alg") != "HS256" or header.get("kid") != token.id:
        return False
    signing_input = f"{parts[0]}.{b64url(content.encode())}".encode()
    expected = hmac.new(token.secret.encode(), signing_input, hashlib.sha256).digest()
    return hmac.compare_digest(expected, signature)


def _host_port(server: str) -> tuple[str, int]:
    u = urllib.parse.urlsplit(server)
    return u.hostname or "", u.port or 443


def _cluster_info(server: str, ctx: ssl.SSLContext) -> dict[str, str]:
    status, body = kubeapi.get(server + apiserver.CLUSTER_INFO_PATH, ctx, timeout=10)
    if status in (401, 403, 404):
        raise Refused(f"{server} does not publish cluster-info (HTTP {status})",
                      hint="is k4s.server a k4s (or kubeadm) server's apiserver?")
    if status != 200:
        raise K4sError(f"{server} answered HTTP {status} for cluster-info")
    try:
        data = json.loads(body)["data"]
    except (ValueError, KeyError, TypeError):
        raise Refused(f"{server}'s cluster-info is not a ConfigMap", hint="is k4s.server an apiserver?") from None
    if not isinstance(data, dict) or not isinstance(data.get("kubeconfig"), str):
        raise Refused(f"{server}'s cluster-info has no kubeconfig", hint="is k4s.server an apiserver?")
    return data


def discover(server: str, token: Token, ca_hash: str) -> bytes:
    """The cluster CA (PEM), once cluster-info is signed with the token and its CA matches the pin."""
    from k4s.cluster.pki import spki_hash_pem

    data = _cluster_info(server, kubeapi.tls_context(None))  # unverified: the content is checked below
    signature = data.get(f"jws-kubeconfig-{token.id}")
    if not signature:
        raise Refused(f"token {token.id} is not valid for this cluster: unknown or expired", hint=HINT_NEW_TOKEN)
    if not jws_matches(data["kubeconfig"], signature, token):
        raise Refused(f"token {token.id}: cluster-info's signature does not match the token's secret "
                      "(a mistyped token, or a server that is not the one it claims)", hint=HINT_NEW_TOKEN)
    try:
        _, ca_pem = addons.read_cluster_info(data["kubeconfig"])
    except ValueError:
        raise Refused(f"{server}'s cluster-info kubeconfig has no CA", hint="is k4s.server a k4s server?") from None
    got = spki_hash_pem(ca_pem)
    if not hmac.compare_digest(got, ca_hash):
        raise Refused(f"the cluster CA's hash {got} is not the pinned k4s.ca-hash {ca_hash}",
                      hint="check it against the server's console line `k4s: cluster CA sha256:...`")
    # the same document over TLS checked against that CA: the server holds the CA's certificate key
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    try:
        _cluster_info(server, ctx)
    except ssl.SSLCertVerificationError as e:
        raise Refused(f"{server}'s certificate does not verify against the pinned CA: {e.verify_message}",
                      hint="join by an address the apiserver's certificate names (its node IP, or a tls-san)") from None
    return ca_pem


def node_csr(node_name: str) -> tuple[bytes, bytes, str]:
    """A node-client CSR and its key, made once per join: (CSR PEM, key PEM, its name). The name
    is a digest of the public key and the subject, as the kubelet's bootstrap names its CSR, so
    that a try after a timeout finds the request the first one made instead of making a second
    one (which the approver refuses: the token joins one request)."""
    import hashlib

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from k4s.cluster.pki import key_pem, new_key

    key = new_key()
    subject = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                         x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node_name}")])
    csr = x509.CertificateSigningRequestBuilder().subject_name(subject).sign(key, hashes.SHA256())
    spki = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(b"|".join([base64.urlsafe_b64encode(spki), f"system:node:{node_name}".encode(),
                                       b"system:nodes", b"digital signature", b"client auth"])).digest()
    name = "node-csr-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")
    return csr.public_bytes(serialization.Encoding.PEM), key_pem(key), name


def request_client_cert(server: str, ca_pem: bytes, token: Token, request: tuple[bytes, bytes, str],
                        timeout: float = 120.0) -> tuple[bytes, bytes]:
    """The kubelet's first client certificate through the CSR API; (cert PEM, key PEM). request:
    node_csr's; made once, so a second try polls the request the first one made."""
    host, port = _host_port(server)
    client = kubeapi.Client(host, port, ssl.create_default_context(cadata=ca_pem.decode()), bearer=token.bearer)
    csr, key, name = request
    body = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
            "metadata": {"name": name},
            "spec": {"request": base64.b64encode(csr).decode(), "signerName": NODE_CLIENT_SIGNER,
                     "usages": ["digital signature", "client auth"], "expirationSeconds": 365 * 86400}}
    try:
        client.json("POST", CSR_API, body)
    except kubeapi.APIError as e:
        if e.status == 401:
            raise Refused(f"the apiserver refused token {token.id}: it has expired or was deleted",
                          hint=HINT_NEW_TOKEN) from None
        if e.status == 403:
            raise Refused(f"token {token.id} may not ask for a node certificate ({e.message})",
                          hint="make the token with `k4s token create`, which grants that and nothing else") from None
        if e.status != 409:  # 409: made by an earlier try whose answer was lost; its name is ours
            raise
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        status = client.json("GET", f"{CSR_API}/{name}").get("status", {})
        for c in status.get("conditions", []):
            if c.get("type") in ("Denied", "Failed"):
                raise Refused(f"the node certificate request {name} was {c['type'].lower()}: {c.get('message', '')}",
                              hint="see the server's controller-manager log")
        if status.get("certificate"):
            return base64.b64decode(status["certificate"]), key
        time.sleep(0.5)
    raise K4sError(f"the node certificate request {name} was not signed within {timeout:.0f}s",
                   hint="the server's controller-manager approves and signs it; see its log")


def node_kubeconfig(server: str, ca: Path, pem: Path) -> str:
    """A kubeconfig naming files, not embedding them: the kubelet rotates pem in place."""
    import yaml

    return yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "k4s", "cluster": {"server": server, "certificate-authority": str(ca)}}],
        "users": [{"name": "node", "user": {"client-certificate": str(pem), "client-key": str(pem)}}],
        "contexts": [{"name": "k4s", "context": {"cluster": "k4s", "user": "node"}}],
        "current-context": "k4s", "preferences": {},
    }, sort_keys=False)


def write_credentials(files: certs.Files, cert_dir: Path, server: str, ca_pem: bytes,
                      cert: bytes, key: bytes) -> None:
    """The CA, and the kubelet's certificate where its certificate manager keeps it
    (kubelet-client-<stamp>.pem and the kubelet-client-current.pem link), which the
    node's other daemons (kube-proxy, flannel) use too."""
    write_atomic(files.crt(certs.CLUSTER_CA), ca_pem, 0o644)
    stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.gmtime())
    pem = cert_dir / f"kubelet-client-{stamp}.pem"
    write_atomic(pem, cert + key, 0o600)
    current = cert_dir / kubelet.CLIENT_PEM
    tmp = current.with_name(current.name + ".tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(pem.name, tmp)
    os.replace(tmp, current)
    write_atomic(files.kubeconfig(certs.KUBELET), node_kubeconfig(server, files.crt(certs.CLUSTER_CA), current), 0o600)



def retrying(server: str, deadline: float, attempt: Callable[[], T]) -> T:
    """attempt() until it succeeds, retrying what the network or a starting server may fix (with
    back-off, a line per try); Refused is raised at once."""
    delay, end, tries = 1.0, time.monotonic() + deadline, 0
    while True:
        tries += 1
        try:
            return attempt()
        except Refused:
            raise
        except (OSError, K4sError) as e:
            msg = e.message if isinstance(e, K4sError) else (str(e) or type(e).__name__)
            if time.monotonic() + delay > end:
                raise K4sError(f"could not join {server}: {msg}",
                               hint="check the server is up and reachable from this node") from None
            log.event("join", "retry", level="warn", server=server, attempt=tries, error=msg, wait=f"{delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 15.0)


def join(server: str, token_text: str, ca_hash: str, node_name: str, files: certs.Files, cert_dir: Path,
         deadline: float = 600.0, via: str = "") -> str:
    """Discovery and TLS bootstrap, retrying what the network or a starting server may fix
    (with back-off, a line per try); the CA's hash. Refused is raised at once. The node's
    kubeconfig names `via` (the worker's API load balancer, k4s.cluster.apilb), or server."""
    token = Token.parse(token_text)
    request = node_csr(node_name)

    def attempt() -> tuple[bytes, bytes, bytes]:
        ca_pem = discover(server, token, ca_hash)
        return (ca_pem, *request_client_cert(server, ca_pem, token, request))

    ca_pem, cert, key = retrying(server, deadline, attempt)
    write_credentials(files, cert_dir, via or server, ca_pem, cert, key)
    log.event(*events.JOINED, server=server, token=token.id)
    return ca_hash


# --- a server that joins: kubeadm join --control-plane ------------------------------------------

def fetch_shared(server: str, ca_pem: bytes, token: Token, certificate_key: str) -> dict[str, bytes]:
    """The token's sealed shared keys, read with the token over TLS verified against the pinned CA,
    opened with the certificate key (k4s.cluster.copycerts)."""
    from k4s.cluster import copycerts
    from k4s.cluster.pki import spki_hash_pem

    host, port = _host_port(server)
    client = kubeapi.Client(host, port, ssl.create_default_context(cadata=ca_pem.decode()), bearer=token.bearer)
    try:
        secret = client.json("GET", f"{copycerts.SECRETS}/{copycerts.secret_name(token.id)}")
    except kubeapi.APIError as e:
        if e.status == 401:
            raise Refused(f"the apiserver refused token {token.id}: it has expired or was deleted",
                          hint=HINT_NEW_TOKEN + " --control-plane") from None
        if e.status in (403, 404):
            raise Refused(f"token {token.id} cannot read the cluster's shared keys (HTTP {e.status}): it is not a "
                          "control-plane token, or its upload was taken back",
                          hint="make the server's join with `k4s token create --control-plane`") from None
        raise
    try:
        shared = copycerts.opened(secret, certificate_key)
    except copycerts.WrongKey as e:
        raise Refused(e.message, hint=e.hint) from None
    if not hmac.compare_digest(spki_hash_pem(shared["ca.crt"]), spki_hash_pem(ca_pem)):
        raise Refused("the shared cluster CA is not the pinned one the server presented",
                      hint="the sealed files were replaced: make a new join with `k4s token create --control-plane`")
    return shared


def join_control_plane(server: str, token_text: str, ca_hash: str, certificate_key: str, files: certs.Files,
                       deadline: float = 600.0) -> str:
    """Discovery, then the shared CA keys (kubeadm's copycerts), written where this node's PKI keeps
    them; retrying what a starting server may fix, as `join` does. The CA's hash."""
    from k4s.cluster import copycerts

    token = Token.parse(token_text)
    shared = retrying(server, deadline, lambda: fetch_shared(server, discover(server, token, ca_hash), token,
                                                             certificate_key))
    copycerts.write(files, shared)
    log.event(*events.CERTS_FETCHED, server=server, token=token.id, files=len(shared))
    return ca_hash
