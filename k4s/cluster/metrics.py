"""k4s's own Prometheus endpoint, and the snapshot `k4s status` prints.

    https://<node-ip>:<metrics-port>/metrics   Prometheus text (prometheus_client)
    https://<node-ip>:<metrics-port>/status    the same data as JSON (`k4s status --remote`)

What it serves: per component up, restarts, seconds to ready and the boot
timeline (the supervisor's status.json); the memory breakdown the console's
stats line prints (/proc); every certificate's expiry and the renewals
(certs.json, k4s.cluster.renew).

Only authenticated and authorized clients get an answer, as with the kubelet's
own port: a client certificate from the cluster's client CAs (a server: the
cluster CA and the operator CA, as the apiserver; an agent: the cluster CA), or
a bearer token the apiserver accepts (TokenReview: a Prometheus ServiceAccount);
then a SubjectAccessReview asks the apiserver whether that user may `get` the
non-resource URL (`/metrics`: the system:monitoring role grants it, as it does
for the components' own). Anyone else gets 401 or 403. The TLS identity is the
node's serving certificate (the kubelet's). The components' own metrics ports
stay on loopback.
"""

from __future__ import annotations

import http.server
import json
import os
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k4s import log
from k4s.cluster import etcdsnapshot, kubeapi, renew
from k4s.cluster.memory import anon_by_process, memory_summary
from k4s.errors import K4sError
from k4s.layout import Paths
from k4s.sys import firmware
from k4s.sys.mem import meminfo
from k4s.tlsserve import TLSThreadingServer

TIMEOUT = 10.0        # a client that has not finished its request by then is dropped
AUTH_CACHE = 60.0     # seconds a TokenReview or SubjectAccessReview answer is reused
DENIED_CACHE = 30.0   # ... and a refusal (as the kubelet's webhook authorizer): a grant shows sooner
TOP_PROCESSES = 20
PATHS = ("/metrics", "/status")


# --- the data ----------------------------------------------------------------------------

def snapshot(paths: Paths, proc: bool = True) -> dict[str, Any]:
    """Everything the endpoint and `k4s status` show, from the files the node keeps current
    and, with proc, from /proc (the machine's memory)."""
    try:
        status = json.loads(paths.status.read_text())
    except (OSError, ValueError):
        status = {}
    doc: dict[str, Any] = {"started": status.get("started"), "supervisor_pid": status.get("supervisor_pid"),
                           "components": status.get("components", {}), "certificates": {}, "renewals": 0}
    certs = renew.read_status(paths.certs)
    doc["certificates"], doc["renewals"] = certs.get("certificates", {}), certs.get("renewals", 0)
    if proc:
        m = firmware.measured()
        doc["boot"] = firmware.trust(measured_boot=m)
        if m:
            doc["measured"] = m
        try:
            mi = meminfo()
            doc["memory"] = {**memory_summary(mi), "mem_available_mib": mi.get("MemAvailable", 0) >> 10}
            doc["processes"] = [{"pid": pid, "name": name, "anon_mib": round(kib / 1024, 1)}
                                for kib, pid, name in anon_by_process()[:TOP_PROCESSES]]
        except (OSError, ValueError, KeyError):
            pass
    return doc


def families(doc: dict[str, Any]) -> Iterator[Any]:
    """The snapshot as Prometheus metric families."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    comps = doc.get("components", {})
    up = GaugeMetricFamily("k4s_component_up", "1 when the component (or k4s task) is ready", labels=["component"])
    restarts = CounterMetricFamily("k4s_component_restarts", "times the component was started again since k4s "
                                   "started (crashes and certificate renewals)", labels=["component"])
    to_ready = GaugeMetricFamily("k4s_component_ready_seconds", "seconds from the component's latest start to ready",
                                 labels=["component"])
    timeline = GaugeMetricFamily("k4s_boot_component_ready_seconds", "the boot timeline: seconds from power-on "
                                 "(kernel start) to the component's first ready", labels=["component"])
    for name, c in comps.items():
        up.add_metric([name], 1.0 if c.get("ready") else 0.0)
        restarts.add_metric([name], float(c.get("restarts", 0)))
        if c.get("ready_after") is not None:
            to_ready.add_metric([name], float(c["ready_after"]))
        if c.get("ready_at") is not None and doc.get("started") is not None:
            timeline.add_metric([name], float(doc["started"]) + float(c["ready_at"]))
    yield from (up, restarts, to_ready, timeline)
    if doc.get("started") is not None:
        yield GaugeMetricFamily("k4s_boot_k4s_started_seconds", "seconds from power-on to k4s starting the node",
                                value=float(doc["started"]))
    if "memory" in doc:
        mem = GaugeMetricFamily("k4s_memory_bytes", "the machine's RAM: total, used (total - available), "
                                "available, anon (process heaps), shmem (tmpfs: the RAM root, etcd, images), "
                                "kernel (unreclaimable), swapped (pages in zram, uncompressed), zram (the RAM they take)",
                                labels=["kind"])
        for key, value in doc["memory"].items():
            mem.add_metric([key.removeprefix("mem_").removesuffix("_mib")], float(value) * 1024 * 1024)
        yield mem
        procs = GaugeMetricFamily("k4s_process_anon_bytes", "anonymous memory (RssAnon) of the biggest processes",
                                  labels=["process", "pid"])
        for p in doc.get("processes", []):
            procs.add_metric([p["name"], str(p["pid"])], p["anon_mib"] * 1024 * 1024)
        yield procs
    expiry = GaugeMetricFamily("k4s_certificate_expiry_timestamp_seconds", "when each certificate expires (Unix "
                               "time); alert on a CA well ahead, leaves renew themselves", labels=["certificate", "ca"])
    for name, c in doc.get("certificates", {}).items():
        expiry.add_metric([name, "true" if c.get("ca") else "false"], float(c["expires"]))
    yield expiry
    yield CounterMetricFamily("k4s_certificate_renewals", "leaf certificates renewed while k4s ran",
                              value=float(doc.get("renewals", 0)))


class Collector:
    def __init__(self, paths: Paths) -> None:
        self.paths = paths

    def collect(self) -> Iterator[Any]:
        return families(snapshot(self.paths))


def exposition(paths: Paths) -> bytes:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(paths))
    return generate_latest(registry)


# --- who may read it ---------------------------------------------------------------------

def cert_identity(peer: dict[str, Any] | None) -> tuple[str, list[str]] | None:
    """(user, groups) of a verified client certificate, as the apiserver reads it: CN and O."""
    if not peer:
        return None
    cn, orgs = "", []
    for rdn in peer.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                cn = value
            elif key == "organizationName":
                orgs.append(value)
    return (cn, orgs) if cn else None


class Authorizer:
    """TokenReview and SubjectAccessReview through the apiserver, with a short cache (shorter
    for a refusal)."""

    def __init__(self, connect: Callable[[], kubeapi.Client]) -> None:
        self.connect = connect
        self.cache: dict[Any, tuple[float, Any]] = {}  # key -> (when it expires, the answer)
        self.lock = threading.Lock()

    def _cached(self, key: Any, ask: Callable[[], Any]) -> Any:
        now = time.monotonic()
        with self.lock:
            hit = self.cache.get(key)
            if hit and now < hit[0]:
                return hit[1]
        answer = ask()
        with self.lock:
            if len(self.cache) > 1000:
                self.cache.clear()
            self.cache[key] = (now + (AUTH_CACHE if answer else DENIED_CACHE), answer)
        return answer

    def token_identity(self, token: str) -> tuple[str, list[str]] | None:
        def ask() -> tuple[str, list[str]] | None:
            review = self.connect().json("POST", "/apis/authentication.k8s.io/v1/tokenreviews", {
                "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}})
            st = review.get("status", {})
            if not st.get("authenticated"):
                return None
            return st["user"]["username"], list(st["user"].get("groups", []))
        import hashlib

        return self._cached(("token", hashlib.sha256(token.encode()).hexdigest()), ask)

    def allowed(self, user: str, groups: list[str], path: str) -> bool:
        def ask() -> bool:
            review = self.connect().json("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", {
                "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
                "spec": {"user": user, "groups": groups, "nonResourceAttributes": {"path": path, "verb": "get"}}})
            return bool(review.get("status", {}).get("allowed"))
        return self._cached(("sar", user, tuple(sorted(groups)), path), ask)


# --- the server ----------------------------------------------------------------------------

class Endpoint:
    """The HTTPS server: the node's serving certificate (re-read when it is renewed), client
    certificates checked against client_ca (optional: a bearer token will do)."""

    def __init__(self, paths: Paths, serving: tuple[Path, Path], client_ca: Path, authz: Authorizer,
                 snapshot: Callable[[], Iterator[bytes]] | None = None,
                 etcd_status: Callable[[], dict[str, Any]] | None = None,
                 sealed_keys: Callable[[bytes], dict[str, Any]] | None = None) -> None:
        self.paths, self.serving, self.client_ca, self.authz = paths, serving, client_ca, authz
        self.snapshot = snapshot  # a server's etcd snapshot (k4s.cluster.etcdsnapshot)
        self.sealed_keys = sealed_keys  # a server's shared keys, sealed for a snapshot's restore
        self.etcd_status = etcd_status  # a server's etcd members, for /status
        self._ctx: ssl.SSLContext | None = None
        self._stamp: tuple[float, ...] = ()

    def context(self) -> ssl.SSLContext:
        stamp = tuple(os.stat(p).st_mtime for p in (*self.serving, self.client_ca))
        if self._ctx is None or stamp != self._stamp:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_2
            ctx.load_cert_chain(*map(str, self.serving))
            ctx.load_verify_locations(cafile=str(self.client_ca))
            ctx.verify_mode = ssl.CERT_OPTIONAL
            self._ctx, self._stamp = ctx, stamp
        return self._ctx

    def identity(self, peer: dict[str, Any] | None, authorization: str | None) -> tuple[str, list[str]] | None:
        who = cert_identity(peer)
        if who is None and authorization and authorization.startswith("Bearer "):
            who = self.authz.token_identity(authorization[len("Bearer "):].strip())
        return who

    def answer(self, target: str, peer: dict[str, Any] | None,
               authorization: str | None) -> tuple[int, str, bytes | Iterator[bytes]]:
        """(status, content type, body) for a GET of target (a path and its query); the body of an
        etcd snapshot is a stream."""
        path, _, query = target.partition("?")
        server_only = {etcdsnapshot.PATH: self.snapshot, etcdsnapshot.KEYS_PATH: self.sealed_keys}
        if path not in PATHS and not server_only.get(path):
            return 404, "text/plain", b"not found: /metrics or /status (or, on a server, /etcd/snapshot)\n"
        try:
            who = self.identity(peer, authorization)
            if who is None:
                return 401, "text/plain", b"unauthorized: present a client certificate or a bearer token\n"
            if not self.authz.allowed(who[0], who[1], path):
                return 403, "text/plain", f"forbidden: {who[0]} may not get {path}\n".encode()
        except (OSError, K4sError) as e:
            return 503, "text/plain", f"cannot reach the apiserver to check the client: {e}\n".encode()
        if path == etcdsnapshot.PATH and self.snapshot:
            log.event("etcd", "snapshot", by=who[0])
            return 200, "application/octet-stream", self.snapshot()
        if path == etcdsnapshot.KEYS_PATH and self.sealed_keys:
            return self.keys_answer(query, who[0])
        if path == "/metrics":
            from prometheus_client import CONTENT_TYPE_LATEST

            return 200, CONTENT_TYPE_LATEST, exposition(self.paths)
        doc = snapshot(self.paths)
        if self.etcd_status is not None:
            try:
                doc["etcd"] = self.etcd_status()
            except (OSError, K4sError) as e:
                doc["etcd"] = {"error": str(e)}
        return 200, "application/json", (json.dumps(doc, indent=1) + "\n").encode()

    def keys_answer(self, query: str, who: str) -> tuple[int, str, bytes]:
        import base64
        import urllib.parse

        try:
            [public] = urllib.parse.parse_qs(query, max_num_fields=4).get("public-key", [])
            key = base64.urlsafe_b64decode(public + "=" * (-len(public) % 4))
        except ValueError:
            key = b""
        if len(key) != 32:
            return 400, "text/plain", b"bad request: ?public-key= a one-time X25519 public key (base64url)\n"
        try:
            sealed = self.sealed_keys(key)  # type: ignore[misc]
        except (OSError, K4sError) as e:
            return 503, "text/plain", f"cannot seal the keys: {e}\n".encode()
        log.event("etcd", "keys-sealed", by=who)
        return 200, "application/json", json.dumps(sealed).encode()

    def serve(self, host: str, port: int, stop: threading.Event) -> None:
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            server_version = "k4s"
            timeout = TIMEOUT

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                assert isinstance(self.connection, ssl.SSLSocket)
                status, ctype, body = endpoint.answer(self.path, self.connection.getpeercert(),
                                                      self.headers.get("Authorization"))
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if isinstance(body, bytes):
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                    return
                # a stream (an etcd snapshot): its end is the connection's; one cut short is
                # caught by the client's check of the sha256 etcd sends last
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                try:
                    for block in body:
                        self.wfile.write(block)
                except (OSError, K4sError) as e:
                    log.event("etcd", "snapshot-failed", level="warn", error=str(e))

            def log_message(self, *_: Any) -> None:
                pass

        server = TLSThreadingServer((host, port), Handler, endpoint.context)
        server.timeout = 1.0
        log.event("metrics", "serving", url=f"https://{host}:{port}/metrics")
        with server:
            while not stop.is_set():
                server.handle_request()


def start(node: Any, connect: Callable[[], kubeapi.Client], stop: threading.Event,
          call_in_child: Callable[..., Any]) -> threading.Thread | None:
    """Serve on the node IP once the serving certificate exists (an agent's comes by CSR).
    call_in_child: the supervisor's, for what imports cryptography (a server's sealed keys)."""
    from k4s.cluster import certs
    from k4s.cluster.components import kubelet

    port = node.cfg.metrics_port
    if not port:
        return None
    serving = kubelet.serving_pair(node)
    client_ca = node.certs.crt(certs.CLUSTER_CA if node.cfg.role == "agent" else certs.CLIENT_CA_BUNDLE)
    snapshot = members = sealed_keys = None
    if node.cfg.role == "server":
        from k4s.cluster import etcdmembers
        from k4s.cluster.components import etcd

        def snapshot() -> Iterator[bytes]:
            return etcdsnapshot.stream(etcd.CLIENT_URL, etcd.client_context(node))

        def members() -> dict[str, Any]:
            return etcdmembers.status(etcd.CLIENT_URL, etcd.client_context(node))

        def sealed_keys(public_key: bytes) -> dict[str, Any]:
            return call_in_child(lambda: etcdsnapshot.sealed_keys(node.certs, public_key), 60)  # type: ignore[no-any-return]
    endpoint = Endpoint(node.paths, serving, client_ca, Authorizer(connect), snapshot, members, sealed_keys)

    def run() -> None:
        while not stop.is_set() and not all(p.exists() for p in serving):
            stop.wait(2)
        try:
            endpoint.serve(node.node_ip, port, stop)
        except OSError as e:
            log.event("metrics", "failed", level="warn", error=str(e), port=port)

    t = threading.Thread(target=run, name="metrics", daemon=True)
    t.start()
    return t
