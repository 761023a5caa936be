"""The operator's side of trust, on the build host.

The operator CA's key never leaves this host (0600 in a 0700 directory). A node
is seeded with the CA's certificate only and trusts it for client
certificates; the operator's admin certificate, minted here, is in the group
bootstrap binds to cluster-admin (k4s:cluster-admins), so access is withdrawn
by deleting that binding, not by rebuilding the cluster.

The other direction: the node makes its own CA at boot and prints its pin
(`sha256:` + hex of the SubjectPublicKeyInfo, kubeadm's format). The host
fetches the CA from kubeadm's `cluster-info` document over TLS, checks it
against the pin, and only then writes a kubeconfig that trusts it.
"""

from __future__ import annotations

import json
import os
import ssl
from dataclasses import dataclass
from pathlib import Path

from k4s.cluster import addons, certs, kubeapi, pki
from k4s.cluster.components.apiserver import CLUSTER_INFO_PATH
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

OPERATOR_CA = certs.CA("ca", "k4s-operator-ca")
ADMIN = certs.Leaf("admin", OPERATOR_CA, "k4s-operator", (certs.OPERATORS_GROUP,))


class NotYet(K4sError):
    """The node does not answer (yet): worth another try, unlike a CA that fails its pin."""


@dataclass(frozen=True)
class Operator:
    dir: Path  # out/operator: ca.{crt,key}, admin.{crt,key}

    @property
    def ca_crt(self) -> Path:
        return self.dir / "ca.crt"

    @property
    def admin_crt(self) -> Path:
        return self.dir / "admin.crt"

    @property
    def admin_key(self) -> Path:
        return self.dir / "admin.key"

    def ensure(self, renew_days: int = 30) -> None:
        """The operator CA (made once) and an admin certificate from it (re-made before it expires)."""
        try:
            self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            os.chmod(self.dir, 0o700)
        except OSError as e:
            raise K4sError(f"cannot make {self.dir}: {e.strerror}", hint="choose a writable --out") from e
        store = pki.PKI(self.dir, self.dir, renew_days)
        store.ensure_ca(OPERATOR_CA)
        ca_key, ca_cert = store.load_ca(OPERATOR_CA)
        if store.leaf_problems(ADMIN, ca_cert):  # missing, expiring within renew_days, or not from this CA
            store.write(ADMIN.name, *pki.issue_leaf(ADMIN, ca_key, ca_cert))


def pinned_ca(host: str, port: int, pin: str) -> bytes:
    """The cluster CA from the apiserver's cluster-info, as kubeadm's discovery does: fetched
    before anything is trusted, then kept only if it matches the pin. Its PEM."""
    try:  # unverified: the CA it holds is checked against the pin below
        status, body = kubeapi.get(f"https://{host}:{port}{CLUSTER_INFO_PATH}", kubeapi.tls_context(None), timeout=10)
    except (OSError, ssl.SSLError) as e:
        raise NotYet(f"cannot fetch cluster-info from {host}:{port}: {e}", hint="is the node up?") from e
    if status != 200:
        raise NotYet(f"cluster-info from {host}:{port}: HTTP {status}", hint="is the node bootstrapped?")
    try:
        _, ca = addons.read_cluster_info(json.loads(body)["data"]["kubeconfig"])
    except (ValueError, KeyError, TypeError):
        raise K4sError(f"cluster-info from {host}:{port} holds no CA", hint="is this a k4s or kubeadm node?") from None
    got = pki.spki_hash_pem(ca)
    if got != pin:
        raise K4sError(f"the CA the node at {host}:{port} serves is {got}, not the pinned {pin}",
                       hint="someone else may be answering on that address; nothing was written")
    return ca


def write_kubeconfig(path: Path, host: str, port: int, pin: str, op: Operator) -> None:
    """Fetch and check the CA against the pin, check that the apiserver's certificate verifies
    with it, then write the operator's kubeconfig (0600). Nothing is written on a mismatch."""
    ca = pinned_ca(host, port, pin)
    ctx = ssl.create_default_context(cadata=ca.decode())
    ctx.load_cert_chain(op.admin_crt, op.admin_key)
    try:
        status, _ = kubeapi.get(f"https://{host}:{port}/version", ctx, timeout=10)
    except ssl.SSLCertVerificationError as e:
        raise K4sError(f"the apiserver at {host}:{port} does not verify with its own pinned CA: {e.verify_message}",
                       hint="nothing was written") from None
    except (OSError, ssl.SSLError) as e:
        raise NotYet(f"cannot reach the apiserver at {host}:{port}: {e}", hint="is the node up?") from e
    if status != 200:
        raise K4sError(f"the apiserver at {host}:{port} refused the operator's certificate (HTTP {status})",
                       hint="was the node seeded with this host's operator CA (out/operator/ca.crt)?")
    text = pki.kubeconfig_text(ADMIN.common_name, f"https://{host}:{port}", op.admin_crt.read_bytes(),
                               op.admin_key.read_bytes(), ca)
    write_atomic(path, text, 0o600)


def endpoint_context(kubeconfig: Path) -> ssl.SSLContext:
    """A TLS context for a node's endpoint (k4s.cluster.metrics): the kubeconfig's client
    certificate, and the node's serving certificate verified with the cluster's kubelet-serving
    CA, read through the apiserver (the kubeconfig's CA, which clients trust for the apiserver,
    signs no node's serving certificate)."""
    _, ctx = kubeapi.kubeconfig_tls(kubeconfig)
    try:
        serving_ca = kubeapi.Client.from_kubeconfig(kubeconfig).json("GET", addons.KUBELET_SERVING_CA_PATH)["data"]["ca.crt"]
    except (kubeapi.APIError, KeyError, TypeError) as e:
        raise K4sError(f"cannot read the kubelet-serving CA from the apiserver: {e}",
                       hint="is the kubeconfig an admin's of this cluster?") from None
    ctx.load_verify_locations(cadata=serving_ca)  # beside the cluster CA: the server's own node too
    ctx.check_hostname = False  # the node's certificate names its IP and name, not the forwarded address
    return ctx
