"""The server decides the certificate requests a node makes: its first client certificate
(signer kubernetes.io/kube-apiserver-client-kubelet, asked for with a bootstrap token) and its
kubelet serving certificates (kubernetes.io/kubelet-serving). The controller-manager signs what
is approved here; nothing else approves either kind.

A token's client CSR (requester system:bootstrap:<id>) is approved only when:
  - the token still exists and no other request used it (a single-use token is marked used by
    its request before that is approved, so a second machine with it, or a second name, is
    refused; it is deleted once the certificate has been issued for SPEND_GRACE seconds, since
    the machine reads its certificate with that token: `spend_used`);
  - the name is the one the token is bound to, if it is bound (tokens.NODE_ANNOTATION);
  - the name is not the server's own node and not a node that is Ready (a token makes one new
    node, or takes back a rebooted machine's; it never takes over a running one);
  - the request is a node's client certificate and nothing more.
The blanket auto-approval kubeadm binds to system:bootstrappers is not used: it checks only
the system:node: prefix, so any token holder could become the server's node.

A serving CSR is approved only when a node asks for itself: the requester is
system:node:<name> in system:nodes, the subject is the same, the usages are a server's, and
every name in it is the node's: its name, and addresses its Node object reports, none of them
the server's, in the pod or service network, or a name clients use for the apiserver
(`Reserved`), and, since a node writes its own status, the addresses its first approved
serving certificate named and no address another node holds (`Pins`). The certificate comes from the kubelet-serving CA, which only the apiserver
trusts (for kubelets), so even an approved one is no certificate for the apiserver. Anything
else is denied with the reason. A request that does not parse is denied on its own; it
never stops the round.
"""

from __future__ import annotations

import base64
import ipaddress
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from k4s import log
from k4s.cluster import kubeapi
from k4s.cluster.certs import CONTROL_PLANE_GROUP
from k4s.errors import K4sError

SIGNER = "kubernetes.io/kubelet-serving"
CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
CSR_API = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
USAGES = frozenset({"digital signature", "key encipherment", "server auth"})
CLIENT_USAGES = frozenset({"digital signature", "key encipherment", "client auth"})
NODE_PREFIX = "system:node:"
BOOTSTRAP_PREFIX = "system:bootstrap:"
BOOTSTRAPPERS = "system:bootstrappers"
TOKEN_SECRETS = "/api/v1/namespaces/kube-system/secrets"
TOKEN_TYPE = "bootstrap.kubernetes.io/token"
TOKENS_LIST = f"{TOKEN_SECRETS}?fieldSelector=type%3D{TOKEN_TYPE.replace('/', '%2F')}"
NODE_ANNOTATION = "k4s.io/node-name"    # a token bound to one node name
REUSABLE_ANNOTATION = "k4s.io/reusable"  # a token that is not deleted once used (an explicit opt-in)
USED_BY_ANNOTATION = "k4s.io/used-by"  # the one request a single-use token was approved for
ISSUED_ANNOTATION = "k4s.io/issued-seen"  # when the approver first saw that request's certificate
SPEND_GRACE = 30.0  # seconds a used token outlives its certificate: the machine reads it with the token
MAX_PENDING = 4  # requests one requester may have decided in a round; more are denied unread
INTERVAL = 5.0  # seconds between rounds with no new request; each round is a TLS handshake
WATCH_SECONDS = 300  # a watch the server ends after this is started again


def read_request(request_b64: str) -> dict[str, Any]:
    """The names in a PEM CSR (base64, as the API holds it); {"error": ...} when it does not
    parse (the apiserver accepts what `cryptography` refuses, a version-1 CSR among them).
    Imports cryptography: run it in a child."""
    from cryptography import x509
    from cryptography.x509.oid import ExtensionOID, NameOID

    try:
        csr = x509.load_pem_x509_csr(base64.b64decode(request_b64))
        out: dict[str, Any] = {
            "cn": [str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)],
            "orgs": sorted(str(a.value) for a in csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)),
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
    except (ValueError, TypeError, x509.InvalidVersion) as e:
        return {"error": str(e)[:200] or type(e).__name__}
    return out


def _parsed(names: dict[str, Any]) -> str | None:
    if "error" in names:
        return f"the request does not parse ({names['error']})"
    if not names["signature_valid"]:
        return "the request's signature is invalid"
    return None


def client_refusal(csr: dict[str, Any], names: dict[str, Any], token: dict[str, Any] | None,
                   node: dict[str, Any] | None, server_node: str, alive: bool = False,
                   contested: bool = False) -> str | None:
    """Why a token's node-client CSR must not be approved, or None. token: its Secret (None when
    it is gone); node: the Node of that name (None when there is none); alive: its kubelet renewed
    its Lease within LEASE_ALIVE seconds (unless the node said it shut down); contested: another
    pending request names the same node."""
    spec = csr.get("spec", {})
    user = spec.get("username", "")
    token_id = user[len(BOOTSTRAP_PREFIX):]
    if why := _parsed(names):
        return why
    if len(names["cn"]) != 1 or not names["cn"][0].startswith(NODE_PREFIX) or names["orgs"] != ["system:nodes"]:
        return f"the subject {names['cn']}/{names['orgs']} is not system:node:<name>/system:nodes"
    name = names["cn"][0][len(NODE_PREFIX):]
    usages = set(spec.get("usages", []))
    if "client auth" not in usages or not usages <= CLIENT_USAGES:
        return f"usages {sorted(usages)} are not a node client certificate's"
    if names["dns"] or names["ips"] or names["other_names"]:
        return "a node's client certificate names nothing but the node"
    if token is None:
        return f"token {token_id} no longer exists (used, expired or deleted)"
    used_by = (token.get("metadata", {}).get("annotations") or {}).get(USED_BY_ANNOTATION)
    if used_by and used_by != csr.get("metadata", {}).get("name"):
        return f"token {token_id} is spent: request {used_by} joined with it"
    groups = base64.b64decode((token.get("data") or {}).get("auth-extra-groups", "")).decode(errors="replace")
    if CONTROL_PLANE_GROUP in groups.split(","):
        return f"token {token_id} is a server's join (k4s token create --control-plane), not a worker's"
    bound = (token.get("metadata", {}).get("annotations") or {}).get(NODE_ANNOTATION)
    if bound and bound != name:
        return f"token {token_id} is bound to node {bound}, not {name}"
    if name == server_node:
        return f"{name} is the server's own node"
    if node is not None and (ready(node) or (alive and not shut_down(node))):
        return f"node {name} exists and is Ready: a token may not take over a running node"
    if node is not None and not bound:
        return f"node {name} exists, and token {token_id} is not bound to it (take a machine back with " \
               f"`k4s token create --node {name}`)"
    if contested:
        return f"another pending request names node {name}: none of them is approved"
    return None


def ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in node.get("status", {}).get("conditions", []) or [])


SHUTTING_DOWN = "node is shutting down"  # the Ready message of the kubelet's graceful node shutdown


def shut_down(node: dict[str, Any]) -> bool:
    """The node said it powered off: Ready False with the shutdown message, which only its own
    credentials post (a k4s worker does once its kubelet has stopped, after its drain)."""
    return any(c.get("type") == "Ready" and c.get("status") == "False" and c.get("message") == SHUTTING_DOWN
               for c in node.get("status", {}).get("conditions", []) or [])


@dataclass(frozen=True)
class Reserved:
    """What no node's serving certificate may name, whatever its Node says: the pod and service
    networks, the server's own addresses, and the names clients use for the apiserver."""

    networks: tuple[str, ...] = ()
    addresses: frozenset[str] = frozenset()
    names: frozenset[str] = frozenset()
    domain: str = "cluster.local"

    @classmethod
    def of(cls, cfg: Any, server_ips: set[str]) -> Reserved:
        def is_ip(n: str) -> bool:
            try:
                return bool(ipaddress.ip_address(n))
            except ValueError:
                return False
        names = {"kubernetes", "kubernetes.default", "kubernetes.default.svc", "localhost",
                 f"kubernetes.default.svc.{cfg.cluster_domain}", *(n for n in cfg.tls_san if not is_ip(n))}
        return cls((cfg.cluster_cidr, cfg.service_cidr), frozenset(server_ips | {n for n in cfg.tls_san if is_ip(n)}),
                   frozenset(names), cfg.cluster_domain)

    def why(self, node: str, dns: list[str], ips: list[str]) -> str | None:
        for ip in ips:
            try:
                addr = ipaddress.ip_address(ip)
            except ValueError:
                return f"{ip} is not an address"
            if addr.version != 4:  # the cluster is IPv4; ::ffff:a.b.c.d would pass for a.b.c.d in Go
                return f"{ip} is not an IPv4 address"
            if addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_link_local:
                return f"{ip} is not a node's address"
            if ip in self.addresses:
                return f"{ip} is the server's address"
            for net in self.networks:
                if addr in ipaddress.ip_network(net):
                    return f"{ip} is in the pod or service network {net}"
        for n in [node, *dns]:
            if n in self.names or n.endswith(f".svc.{self.domain}") or n.endswith(".svc"):
                return f"{n} is a name clients use for the cluster's services"
        return None


def refusal(csr: dict[str, Any], names: dict[str, Any], addresses: set[str],
            reserved: Reserved = Reserved()) -> str | None:
    """Why this serving CSR must not be approved, or None when it is a node asking for itself."""
    spec = csr.get("spec", {})
    user = spec.get("username", "")
    if not user.startswith(NODE_PREFIX) or "system:nodes" not in spec.get("groups", []):
        return f"{user!r} is not a node"
    node = user[len(NODE_PREFIX):]
    usages = set(spec.get("usages", []))
    if "server auth" not in usages or not usages <= USAGES:
        return f"usages {sorted(usages)} are not a serving certificate's"
    if why := _parsed(names):
        return why
    if names["cn"] != [user] or names["orgs"] != ["system:nodes"]:
        return f"the subject {names['cn']}/{names['orgs']} is not {user}/system:nodes"
    if names["other_names"] or not (names["dns"] or names["ips"]):
        return "the names are not only DNS names and IP addresses"
    if why := reserved.why(node, names["dns"], names["ips"]):
        return why
    foreign = [n for n in names["dns"] if n != node] + [ip for ip in names["ips"] if ip not in addresses]
    if foreign:
        return f"{', '.join(foreign)} {'is' if len(foreign) == 1 else 'are'} not node {node}'s"
    return None




def node_addresses(node: dict[str, Any] | None) -> set[str]:
    return {a["address"] for a in (node or {}).get("status", {}).get("addresses", [])
            if a.get("type") in ("InternalIP", "ExternalIP")}


def pending(csr: dict[str, Any]) -> bool:
    return not any(c.get("type") in ("Approved", "Denied")
                   for c in csr.get("status", {}).get("conditions", []) or [])


def _verdict(client: kubeapi.Client, csr: dict[str, Any], why: str | None, approved_because: str) -> None:
    name = csr["metadata"]["name"]
    verdict = "Denied" if why else "Approved"
    csr.setdefault("status", {}).setdefault("conditions", []).append({
        "type": verdict, "status": "True", "reason": "K4sApprover", "message": why or approved_because})
    client.json("PUT", f"{CSR_API}/{name}/approval", csr)
    log.event("approver", verdict.lower(), csr=name, requester=csr.get("spec", {}).get("username", ""), reason=why)


class Pins:
    """The addresses each node's first approved serving certificate named, kept in a ConfigMap
    only the server writes (node name -> addresses): what a node reports in its status it writes
    itself, so after the first certificate its addresses are these. A join the server approved
    (a new token for the name) starts the node afresh."""

    PATH = "/api/v1/namespaces/kube-system/configmaps/k4s-node-addresses"

    def __init__(self, client: kubeapi.Client) -> None:
        self.client = client
        self.doc = client.get_or_none(self.PATH)

    def all(self) -> dict[str, set[str]]:
        data = (self.doc or {}).get("data") or {}
        return {n: set(filter(None, v.split(","))) for n, v in data.items()}

    def set(self, node: str, addresses: set[str] | None) -> None:
        key = node.replace(":", "_")  # a ConfigMap key: [-._a-zA-Z0-9]
        if self.doc is None:
            if addresses is None:
                return
            self.doc = {"apiVersion": "v1", "kind": "ConfigMap",
                        "metadata": {"name": self.PATH.rsplit("/", 1)[1], "namespace": "kube-system"}, "data": {}}
            self.doc["data"][key] = ",".join(sorted(addresses))
            self.doc = self.client.json("POST", self.PATH.rsplit("/", 1)[0], self.doc)
            return
        data = self.doc.setdefault("data", {}) or {}
        if addresses is None:
            if data.pop(key, None) is None:
                return
        else:
            data[key] = ",".join(sorted(addresses))
        self.doc["data"] = data
        self.doc = self.client.json("PUT", self.PATH, self.doc)


def pinned_refusal(node: str, ips: list[str], pins: dict[str, set[str]]) -> str | None:
    """Why these addresses are not the node's by what the server saw first, or None."""
    mine = pins.get(node.replace(":", "_"))
    if mine is not None and (new := sorted(set(ips) - mine)):
        return f"{', '.join(new)} {'is' if len(new) == 1 else 'are'} not the address node {node} first had " \
               f"({', '.join(sorted(mine))}; a new join starts it afresh)"
    for other, addresses in pins.items():
        if other != node.replace(":", "_") and (taken := sorted(set(ips) & addresses)):
            return f"{', '.join(taken)} {'is' if len(taken) == 1 else 'are'} node {other}'s"
    return None


def decide_serving(client: kubeapi.Client, csr: dict[str, Any], call_in_child: Any,
                   reserved: Reserved = Reserved()) -> None:
    user = csr.get("spec", {}).get("username", "")
    node = user[len(NODE_PREFIX):] if user.startswith(NODE_PREFIX) else ""
    if node:
        addresses = node_addresses(client.get_or_none(f"/api/v1/nodes/{urllib.parse.quote(node, safe='')}"))
        if not addresses:
            return  # its Node has no addresses yet: decided on a later look, not denied for being early
    names = call_in_child(lambda: read_request(csr["spec"]["request"]), 30)
    why = refusal(csr, names, addresses if node else set(), reserved)
    pins = Pins(client)
    if why is None:
        why = pinned_refusal(node, names["ips"], pins.all())
    _verdict(client, csr, why, "a node's serving certificate for its own names")
    if why is None and pins.all().get(node.replace(":", "_")) is None:
        pins.set(node, set(names["ips"]))
        log.event("approver", "pinned", node=node, addresses=",".join(sorted(names["ips"])))


LEASE_ALIVE = 40.0  # seconds: a kubelet renews its Lease every 10; the node controller's grace period


def from_bootstrap_token(csr: dict[str, Any]) -> bool:
    spec = csr.get("spec", {})
    return spec.get("username", "").startswith(BOOTSTRAP_PREFIX) and BOOTSTRAPPERS in spec.get("groups", [])


def node_of(names: dict[str, Any]) -> str:
    cn = names.get("cn") or [""]
    return cn[0][len(NODE_PREFIX):] if len(cn) == 1 and cn[0].startswith(NODE_PREFIX) else ""


def lease_alive(client: kubeapi.Client, name: str, now: float | None = None) -> bool:
    """The node's kubelet renewed its Lease within LEASE_ALIVE seconds (the Ready condition lags
    by up to the grace period)."""
    import datetime as dt

    lease = client.get_or_none(f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{urllib.parse.quote(name, safe='')}")
    renewed = ((lease or {}).get("spec") or {}).get("renewTime")
    if not renewed:
        return False
    try:
        t = dt.datetime.fromisoformat(renewed.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return False
    return (now if now is not None else time.time()) - t < LEASE_ALIVE


def decide_client(client: kubeapi.Client, csr: dict[str, Any], call_in_child: Any, server_node: str,
                  names: dict[str, Any] | None = None, contested: bool = False) -> None:
    """A bootstrap token's node-client CSR; other requesters (a node renewing its own, which the
    controller-manager approves) are not this one's to decide."""
    spec = csr.get("spec", {})
    if not from_bootstrap_token(csr):
        return
    token_id = spec["username"][len(BOOTSTRAP_PREFIX):]
    if names is None:
        names = call_in_child(lambda: read_request(spec["request"]), 30)
    token = client.get_or_none(f"{TOKEN_SECRETS}/bootstrap-token-{token_id}")
    node_name = node_of(names)
    node = client.get_or_none(f"/api/v1/nodes/{urllib.parse.quote(node_name, safe='')}") if node_name else None
    alive = node is not None and lease_alive(client, node_name)
    why = client_refusal(csr, names, token, node, server_node, alive, contested)
    if why is None and token is not None \
            and (token["metadata"].get("annotations") or {}).get(REUSABLE_ANNOTATION) != "true":
        # single-use: marked used by this request before it is approved (a write that names the
        # version read, so of two approvers, or two requests, one wins); deleted by spend_used
        token["metadata"].setdefault("annotations", {})[USED_BY_ANNOTATION] = csr["metadata"]["name"]
        client.json("PUT", f"{TOKEN_SECRETS}/bootstrap-token-{token_id}", token)
        log.event("approver", "token-used", token=token_id, node=node_name, csr=csr["metadata"]["name"])
    _verdict(client, csr, why, f"token {token_id} for node {node_name}")
    if why is None:
        Pins(client).set(node_name, None)  # a join the server approved: its addresses are pinned afresh


def spend_used(client: kubeapi.Client, now: float | None = None) -> None:
    """Delete each used single-use token once its request's certificate has been issued for
    SPEND_GRACE seconds (the machine polls for it with the token; the apiserver's token cache is
    no promise), or at once when the request is gone, denied or failed."""
    now = time.time() if now is None else now
    items = client.json("GET", TOKENS_LIST).get("items", [])
    for token in items:
        try:
            _spend(client, token, now)
        except (OSError, K4sError, ValueError) as e:
            log.event("approver", "error", level="warn", token=token.get("metadata", {}).get("name"), error=str(e))


def _spend(client: kubeapi.Client, token: dict[str, Any], now: float) -> None:
    notes = token.get("metadata", {}).get("annotations") or {}
    if not (csr_name := notes.get(USED_BY_ANNOTATION)):
        return
    csr = client.get_or_none(f"{CSR_API}/{urllib.parse.quote(csr_name, safe='')}")
    status = (csr or {}).get("status") or {}
    failed = any(c.get("type") in ("Denied", "Failed") for c in status.get("conditions") or [])
    if csr is not None and not failed:
        if not status.get("certificate"):
            return
        if ISSUED_ANNOTATION not in notes:
            notes[ISSUED_ANNOTATION] = str(int(now))
            token["metadata"]["annotations"] = notes
            client.json("PUT", f"{TOKEN_SECRETS}/{token['metadata']['name']}", token)
            return
        if now - float(notes[ISSUED_ANNOTATION]) < SPEND_GRACE:
            return
    client.delete_or_none(f"{TOKEN_SECRETS}/{token['metadata']['name']}")
    log.event("approver", "token-spent", token=token["metadata"]["name"].removeprefix("bootstrap-token-"),
              csr=csr_name, why="certificate issued" if csr is not None and not failed else "request gone")


def decide_all(client: kubeapi.Client, call_in_child: Any, server_node: str,
               reserved: Reserved = Reserved()) -> None:
    """One round: every pending node-client and kubelet-serving request decided, each on its own
    (one that fails is logged and the round goes on)."""
    def listed(signer: str) -> list[dict[str, Any]]:
        """Pending, oldest first (the requester picks the name, not the order); past
        MAX_PENDING from one requester, the rest denied unread (each read is a fork)."""
        items = client.json("GET", f"{CSR_API}?fieldSelector=spec.signerName%3D{signer}").get("items", [])
        out, seen = [], Counter[str]()
        for csr in sorted(filter(pending, items), key=lambda c: c.get("metadata", {}).get("creationTimestamp", "")):
            user = csr.get("spec", {}).get("username", "")
            seen[user] += 1
            if seen[user] <= MAX_PENDING:
                out.append(csr)
            else:
                try:
                    _verdict(client, csr, f"{user} has more than {MAX_PENDING} requests pending", "")
                except (OSError, K4sError) as e:
                    log.event("approver", "error", level="warn", csr=csr.get("metadata", {}).get("name"), error=str(e))
        return out

    def each(items: list[dict[str, Any]], decide: Callable[[dict[str, Any]], None]) -> None:
        for csr in items:
            try:
                decide(csr)
            except (OSError, K4sError, KeyError, TypeError, AttributeError) as e:
                log.event("approver", "error", level="warn", csr=csr.get("metadata", {}).get("name"), error=str(e))

    # a token's requests, read first: two pending at once for one node are both refused
    joins = [c for c in listed(CLIENT_SIGNER) if from_bootstrap_token(c)]
    names = {c["metadata"]["name"]: call_in_child(lambda c=c: read_request(c["spec"]["request"]), 30) for c in joins}
    wanted = [node_of(n) for n in names.values()]
    each(joins, lambda csr: decide_client(client, csr, call_in_child, server_node, names[csr["metadata"]["name"]],
                                          wanted.count(node_of(names[csr["metadata"]["name"]])) > 1))
    each(listed(SIGNER), lambda csr: decide_serving(client, csr, call_in_child, reserved))
    spend_used(client)


def watch_requests(connect: Callable[[], kubeapi.Client], wake: threading.Event, stop: threading.Event) -> None:
    """Until stop: wake the approver as soon as a request is made (a watch on CSRs), so that a
    joining node waits for the apiserver, not for the next round."""
    while not stop.is_set():
        try:
            for change in connect().watch(CSR_API, WATCH_SECONDS, stop):
                if change.get("type") == "ADDED":
                    wake.set()
        except (OSError, K4sError, ValueError) as e:
            log.event("approver", "watch-error", level="debug", error=str(e))
        stop.wait(1.0)  # the server ended the watch, or the connection dropped: watch again


def run(connect: Callable[[], kubeapi.Client], call_in_child: Any, stop: threading.Event, server_node: str,
        reserved: Reserved = Reserved(), also: Callable[[kubeapi.Client], Any] | None = None) -> None:
    """Until stop: a round when a request is made, and every INTERVAL seconds (a request decided
    later, e.g. before its Node has addresses), with a new client each round (it picks up the
    admin certificate after a renewal). `also` runs in each round after the CSRs: the server's
    other requests (k4s.cluster.copycerts' uploads)."""
    wake = threading.Event()
    threading.Thread(target=watch_requests, args=(connect, wake, stop), name="approver-watch", daemon=True).start()
    while not stop.is_set():
        wake.clear()
        try:
            client = connect()
            decide_all(client, call_in_child, server_node, reserved)
            if also is not None:
                also(client)
        except (OSError, K4sError) as e:
            log.event("approver", "error", level="warn", error=str(e))
        wake.wait(INTERVAL)
