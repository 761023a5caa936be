"""The server approves kubelet serving certificates (signer kubernetes.io/kubelet-serving).

The controller-manager signs them but never approves them on its own: upstream leaves
that to the cluster (kubeadm's docs point at an approver). Without one a worker's
kubelet serves a self-signed certificate, and the apiserver, which checks kubelets
against the cluster CA, could not reach it for logs or exec.

A request is approved only when a node asks for itself: the requester is
system:node:<name> in system:nodes, the subject is the same, the usages are a
server's, and every name in it is the node's: its name, and addresses its Node
object reports. Anything else is denied with the reason.
"""

from __future__ import annotations

import base64
import threading
from collections.abc import Callable
from typing import Any

from k4s import log
from k4s.cluster import kubeapi
from k4s.errors import K4sError

SIGNER = "kubernetes.io/kubelet-serving"
CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
USAGES = frozenset({"digital signature", "key encipherment", "server auth"})
NODE_PREFIX = "system:node:"
INTERVAL = 5.0  # a worker waits at most this for its serving certificate; each look is a TLS handshake


def read_request(request_b64: str) -> dict[str, Any]:
    """The names in a PEM CSR (base64, as the API holds it). Imports cryptography: run it in a child."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    csr = x509.load_pem_x509_csr(base64.b64decode(request_b64))
    out: dict[str, Any] = {
        "cn": [a.value for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
        "orgs": sorted(a.value for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)),
        "dns": [], "ips": [], "other_names": False, "signature_valid": csr.is_signature_valid,
    }
    for ext in csr.extensions:
        if ext.oid != ExtensionOID.SUBJECT_ALTERNATIVE_NAME:
            continue
        for name in ext.value:
            if isinstance(name, x509.DNSName):
                out["dns"].append(name.value)
            elif isinstance(name, x509.IPAddress):
                out["ips"].append(str(name.value))
            else:
                out["other_names"] = True
    return out


def refusal(csr: dict[str, Any], names: dict[str, Any], addresses: set[str]) -> str | None:
    """Why this serving CSR must not be approved, or None when it is a node asking for itself."""
    spec = csr.get("spec", {})
    user = spec.get("username", "")
    if not user.startswith(NODE_PREFIX) or "system:nodes" not in spec.get("groups", []):
        return f"{user!r} is not a node"
    node = user[len(NODE_PREFIX):]
    usages = set(spec.get("usages", []))
    if "server auth" not in usages or not usages <= USAGES:
        return f"usages {sorted(usages)} are not a serving certificate's"
    if not names["signature_valid"]:
        return "the request's signature is invalid"
    if names["cn"] != [user] or names["orgs"] != ["system:nodes"]:
        return f"the subject {names['cn']}/{names['orgs']} is not {user}/system:nodes"
    if names["other_names"] or not (names["dns"] or names["ips"]):
        return "the names are not only DNS names and IP addresses"
    foreign = [n for n in names["dns"] if n != node] + [ip for ip in names["ips"] if ip not in addresses]
    if foreign:
        return f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not node {node}'s"
    return None


def node_addresses(client: kubeapi.Client, name: str) -> set[str]:
    try:
        node = client.json("GET", f"/api/v1/nodes/{name}")
    except kubeapi.APIError as e:
        if e.status == 404:
            return set()
        raise
    return {a["address"] for a in node.get("status", {}).get("addresses", [])
            if a.get("type") in ("InternalIP", "ExternalIP")}


def decide(client: kubeapi.Client, csr: dict[str, Any], call_in_child: Any) -> None:
    status = csr.get("status", {})
    if any(c.get("type") in ("Approved", "Denied") for c in status.get("conditions", []) or []):
        return
    name = csr["metadata"]["name"]
    user = csr.get("spec", {}).get("username", "")
    addresses = node_addresses(client, user[len(NODE_PREFIX):]) if user.startswith(NODE_PREFIX) else set()
    if user.startswith(NODE_PREFIX) and not addresses:
        return  # its Node has no addresses yet: decided on a later look, not denied for being early
    names = call_in_child(lambda: read_request(csr["spec"]["request"]), 30)
    why = refusal(csr, names, addresses)
    verdict = "Denied" if why else "Approved"
    csr.setdefault("status", {}).setdefault("conditions", []).append({
        "type": verdict, "status": "True", "reason": "K4sServingApprover",
        "message": why or "a node's serving certificate for its own names"})
    client.json("PUT", f"{CSR_API}/{name}/approval", csr)
    log.event("approver", verdict.lower(), csr=name, requester=user, reason=why)


def run(connect: Callable[[], kubeapi.Client], call_in_child: Any, stop: threading.Event) -> None:
    """Until stop: every pending kubelet-serving request decided, within INTERVAL seconds. A new
    client each round: it picks up the admin certificate after a renewal."""
    while not stop.is_set():
        try:
            client = connect()
            items = client.json("GET", f"{CSR_API}?fieldSelector=spec.signerName%3D{SIGNER}").get("items", [])
            for csr in items:
                decide(client, csr, call_in_child)
        except (OSError, K4sError) as e:
            log.event("approver", "error", level="warn", error=str(e))
        stop.wait(INTERVAL)
