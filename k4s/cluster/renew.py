"""Certificates renewed while the node runs, and their expiry for the metrics.

A server checks its PKI every `interval` (a twentieth of cert-validity, from 20 s
to an hour), and at once on SIGHUP: `PKI.ensure` re-issues every leaf within its
renewal window. The CAs are kept, so everything that trusted the old leaf trusts
the new one, and nothing restarts: every component re-reads its files. The
apiserver reloads its serving, kubelet-client and front-proxy certificates;
etcd and the apiserver's etcd client read theirs at each TLS handshake; the
controllers, the kubelet, kube-proxy and flannel use kubeconfigs that name the
files, which client-go re-reads (every 5 minutes: the renewal window is never
shorter than 10). kubectl keeps working across it.

An agent's kubelet rotates its own client and serving certificates through the
CSR API (the controller-manager signs them, k4s.cluster.approver approves the
serving ones); here it only reports their expiry.

Each check writes <run-dir>/certs.json: what `k4s status` and the metrics read.
The check runs in a forked child: PID 1 never imports cryptography.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from k4s import log
from k4s.cluster import certs
from k4s.cluster.node import Node
from k4s.cluster.supervisor import Supervisor
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

CHECK_TIMEOUT = 120.0


def interval(cert_validity: int) -> float:
    return min(3600.0, max(20.0, cert_validity / 20))


def _server_check(node: Node) -> dict:
    from k4s.cluster import pki

    store, ident = pki.for_config(node.cfg), pki.identity_for(node.cfg)
    results = store.ensure(ident)
    renewed = [r.name for r in results if r.action == "renewed"]
    return {"renewed": renewed, "reasons": {r.name: r.reason for r in results if r.action == "renewed"},
            "expires": pki.expiries(store, ident)}


def _agent_check(node: Node) -> dict:
    from k4s.cluster import pki
    from k4s.cluster.components import kubelet

    files = {certs.CLUSTER_CA.name: node.certs.crt(certs.CLUSTER_CA),
             "kubelet-client": kubelet.client_pem(node), "kubelet-server": kubelet.server_pem(node)}
    return {"renewed": [], "reasons": {}, "expires": {n: t for n, p in files.items()
                                                    if (t := pki.pem_expiry(p)) is not None}}


def check(node: Node) -> dict:
    return _agent_check(node) if node.cfg.role == "agent" else _server_check(node)


def write_status(path: Path, expires: dict[str, float], renewals: int) -> None:
    cas = {ca.name for ca in certs.CAS}
    doc = {"checked": time.time(), "renewals": renewals,
           "certificates": {n: {"expires": t, "ca": n in cas} for n, t in sorted(expires.items())}}
    try:
        write_atomic(path, json.dumps(doc, indent=1) + "\n")
    except (OSError, K4sError):
        pass


def read_status(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


class Renewer:
    """The loop: check, write certs.json, log what was renewed."""

    def __init__(self, node: Node, sup: Supervisor) -> None:
        self.node, self.sup = node, sup
        self.renewals = 0
        self.wake = threading.Event()  # set by SIGHUP: check now

    def once(self) -> list[str]:
        """One check; the leaves renewed."""
        node = self.node
        doc = self.sup.call_in_child(lambda: check(node), CHECK_TIMEOUT)
        renewed = set(doc["renewed"])
        self.renewals += len(renewed)
        write_status(node.paths.certs, doc["expires"], self.renewals)
        for name in sorted(renewed):
            log.event("pki", "renewed", cert=name, reason=doc["reasons"].get(name) or None)
        if certs.ADMIN in renewed:  # the users' copy of the admin kubeconfig
            write_atomic(Path(node.cfg.write_kubeconfig), node.certs.kubeconfig(certs.ADMIN).read_bytes(), 0o600)
        return sorted(renewed)

    def run(self) -> None:
        every = interval(self.node.cfg.cert_validity)
        while not self.sup.stop_requested.is_set():
            self.wake.wait(every)
            self.wake.clear()
            if self.sup.stop_requested.is_set():
                return
            try:
                self.once()
            except (OSError, K4sError) as e:
                log.event("pki", "check-failed", level="warn", error=str(e))

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="renew", daemon=True)
        t.start()
        return t
