"""Run the node: check the host, make the PKI, then supervise the service graph
until a stop signal. Used by `k4s server` on a host and by init on the appliance.

    Config -> Node (its facts) -> preflight -> PKI (in a child) -> services.build -> Supervisor.run
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

from k4s import events, layout, log
from k4s.cluster import apilb, components, etcdsnapshot, metrics, renew, services, tasks
from k4s.cluster.memory import log_stats
from k4s.cluster.node import Node
from k4s.cluster.preflight import preflight
from k4s.cluster.protect import Protector
from k4s.cluster.supervisor import Supervisor
from k4s.cluster.tasks import ManifestWatcher
from k4s.config import Config
from k4s.errors import K4sError
from k4s.sys.mem import meminfo
from k4s.sys.process import call_in_child

PKI_TIMEOUT = 120.0  # key generation under emulation takes seconds, not minutes
JOIN_DEADLINE = 600.0  # a worker may boot before its server is up


def selected(control_plane_only: bool, cfg: Config) -> list[str]:
    """The components this node runs: an agent only the node's part, an etcd-only server etcd."""
    if cfg.etcd_only:
        return ["etcd"]
    agent = cfg.role == "agent"
    return [n for n in components.NAMES if n not in cfg.disable
            and not (control_plane_only and components.module(n).NODE) and not (agent and not components.module(n).NODE)]


def _ensure_pki(cfg: Config) -> dict:
    from k4s.cluster import certs, pki

    store, ident = pki.for_config(cfg), pki.identity_for(cfg)
    results = [(x.name, x.action, x.reason) for x in store.ensure(ident)]
    return {"results": results, "ca_hash": pki.spki_hash_pem(store.crt(certs.CLUSTER_CA.name).read_bytes()),
            "expires": pki.expiries(store, ident)}


def ensure_pki(cfg: Config) -> tuple[list[tuple[str, str, str]], str, dict[str, float]]:
    """Create or renew the certificates: (name, action, reason) for each, and the cluster CA's
    hash. In a forked child: importing cryptography for a once-per-start job would keep ~4 MiB
    in this long-lived process (PID 1 on the appliance)."""
    from k4s.errors import K4sError

    try:
        reply = call_in_child(lambda: _ensure_pki(cfg), PKI_TIMEOUT)
    except K4sError as e:
        raise K4sError(f"PKI: {e.message}", hint=e.hint) from None
    return [tuple(x) for x in reply["results"]], reply["ca_hash"], reply["expires"]


def join_cluster(node: Node) -> str:
    """An agent's discovery and TLS bootstrap (k4s.cluster.join), in a child; the CA's hash."""
    from k4s.cluster import join
    from k4s.cluster.components import kubelet

    cfg = node.cfg
    return call_in_child(lambda: join.join(cfg.server, cfg.token, cfg.ca_hash, cfg.node_name, node.certs,
                                           kubelet.cert_dir(node), JOIN_DEADLINE, via=apilb.URL),
                         JOIN_DEADLINE + 60)


def start_balancer(node: Node) -> apilb.Balancer:
    """A worker's API load balancer (k4s.cluster.apilb), starting from the server it joined and
    learning the others from the cluster, through itself, as the node."""
    import urllib.parse

    u = urllib.parse.urlsplit(node.cfg.server)
    balancer = apilb.Balancer((u.hostname or "", u.port or 443))
    balancer.start(fetch=lambda: tasks.api_client(node).json("GET", apilb.ENDPOINTS))
    return balancer


def fetch_shared_keys(node: Node) -> None:
    """A server that joins: discovery and kubeadm-certs (k4s.cluster.join.join_control_plane)."""
    from k4s.cluster import join

    cfg = node.cfg
    join.join_control_plane(cfg.server, cfg.token, cfg.ca_hash, cfg.certificate_key, node.certs, JOIN_DEADLINE)


def restoring(node: Node, restore_dir: Path = layout.RESTORE_DIR) -> bool:
    """Whether this server boots from an operator's snapshot: a restore segment is there and its
    etcd has no data. K4sError when a segment is there on a server that must not take it."""
    if not (restore_dir / etcdsnapshot.DB).exists():
        return False
    if node.cfg.joins_control_plane:
        raise K4sError("a restore segment on a server that joins: a joining server takes its data from the cluster",
                       hint="boot the restored server alone, without k4s.server; join the others to it after")
    if (node.paths.data / "etcd" / "member").exists():
        raise K4sError(f"a restore segment, and etcd already holds data in {node.paths.data / 'etcd'}: "
                       "a restore starts from an empty server", hint="boot it without its data disk, or wipe that disk")
    return True


def restore_keys(node: Node, restore_dir: Path = layout.RESTORE_DIR) -> None:
    """The shared keys from the restore segment, opened and written where this node's PKI keeps
    them (before the PKI, which keeps a CA it finds). Imports cryptography: run it in a child."""
    from k4s.cluster import copycerts

    _, blobs = etcdsnapshot.opened_segment(restore_dir)
    copycerts.write(node.certs, blobs)


def restore_etcd(node: Node, restore_dir: Path = layout.RESTORE_DIR) -> None:
    """etcdutl's restore of the segment's database into this server's etcd data directory, as a
    cluster of one (made aside, then renamed into place); then the segment is deleted, whatever
    happened: RAM was the only place it was, and it held the keys."""
    import shutil
    import subprocess

    from k4s.cluster.components import etcd

    data = node.paths.data / "etcd"
    aside = node.paths.data / "etcd.restoring"
    shutil.rmtree(aside, ignore_errors=True)
    try:
        cmd = etcdsnapshot.restore_command(node.bin("etcdutl"), restore_dir / etcdsnapshot.DB, aside,
                                           node.cfg.node_name, etcd.urls(node)[2])
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise K4sError(f"etcdutl could not restore the snapshot: {e}", hint="is the payload's kube complete?") from None
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["(no output)"])[-1][:300]
            raise K4sError(f"etcdutl refused the snapshot: {last}",
                           hint="take the snapshot again with `k4s etcd-snapshot save`; a file altered "
                                "or cut short fails its sha256")
        shutil.rmtree(data, ignore_errors=True)  # empty: restoring() checked
        os.replace(aside, data)
        os.chmod(data, 0o700)
        log.event(*events.ETCD_RESTORED, member=node.cfg.node_name, bytes=(restore_dir / etcdsnapshot.DB).stat().st_size)
        log.console(f"k4s: etcd restored from the operator's snapshot: a cluster of one, {node.cfg.node_name}")
    finally:
        shutil.rmtree(aside, ignore_errors=True)
        forget_restore(restore_dir)


def forget_restore(restore_dir: Path = layout.RESTORE_DIR) -> None:
    import shutil

    shutil.rmtree(restore_dir, ignore_errors=True)
    log.event(*events.SECRET_DELETED, path=restore_dir)


def join_etcd(node: Node) -> None:
    """A server that joins, once it has its own certificates: etcd's member add, as a learner
    (k4s.cluster.etcdmembers), through the server it joins. A member of its name is this
    machine's old self only once its Node is seen gone (not Ready, its Lease not renewed): a
    join never takes over a running server. Then, or on any failure, its token is deleted:
    spent (and with it the sealed upload, which the token owns)."""
    import urllib.parse

    from k4s.cluster import approver, certs, copycerts, etcdmembers, kubeapi
    from k4s.cluster.components import etcd

    cfg = node.cfg
    u = urllib.parse.urlsplit(cfg.server)
    admin = kubeapi.Client.from_files(node.certs, u.port or 443, certs.ADMIN, u.hostname or "")
    token_id = cfg.token.split(".")[0]

    def running() -> bool:
        old = admin.get_or_none(f"/api/v1/nodes/{cfg.node_name}")
        return old is not None and (approver.ready(old) or approver.lease_alive(admin, cfg.node_name))

    try:
        end = time.monotonic() + JOIN_DEADLINE
        while running():
            if time.monotonic() > end:
                raise K4sError(f"a server named {cfg.node_name} is running: a join never takes over a running one",
                               hint="give this machine another name, or power the other one off")
            log.event("etcd", "join-waits", level="warn", node=cfg.node_name,
                      reason="a server of this name still looks alive (its Node Ready, or its Lease renewed)")
            time.sleep(10)
        record = etcdmembers.join([etcdmembers.client_url(u.hostname or "")], etcd.client_context(node),
                                  cfg.node_name, node.node_ip, JOIN_DEADLINE)
        etcdmembers.write_record(node.paths.data, record)
    finally:
        try:
            admin.json("DELETE", f"{copycerts.SECRETS}/bootstrap-token-{token_id}")
            log.event("join", "token-deleted", token=token_id)
        except (OSError, kubeapi.APIError) as e:
            log.event("join", "token-delete-failed", level="warn", token=token_id, error=str(e))


def run_server(cfg: Config, control_plane_only: bool,
               stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Bring the node up and supervise it until one of stop_signals arrives; return that signal.

    Raises K4sError on a fatal failure, after stopping whatever had started. The caller has
    set up logging (log.setup).
    """
    from k4s.sys import libc

    node = Node.of(cfg)
    names = selected(control_plane_only, cfg)
    # the wall clock beside the event's uptime: the components' own logs (klog) stamp wall time
    now = time.time()
    clock = time.strftime("%H:%M:%S", time.gmtime(now)) + f".{int(now * 1000) % 1000:03d}Z"
    log.event("k4s", "starting", node=cfg.node_name, ip=node.node_ip, components=",".join(names), clock=clock)
    preflight(node, names)
    from k4s.cluster import joinsecret

    balancer = None
    if cfg.role == "agent":
        ca_hash = join_cluster(node)
        joinsecret.forget(cfg.sources.get("token", ""))  # spent: the server deletes the token too, once the certificate is out
        balancer = start_balancer(node)
    else:
        # a server that joins, the first time (its etcd has no data yet): the shared CA keys first
        joining = cfg.joins_control_plane and not (node.paths.data / "etcd" / "member").exists()
        restore = restoring(node)
        if joining:
            call_in_child(lambda: fetch_shared_keys(node), JOIN_DEADLINE + 60)
        if restore:
            try:
                call_in_child(lambda: restore_keys(node), 60)
            except K4sError:
                forget_restore()
                raise
        results, ca_hash, expires = ensure_pki(cfg)
        for name, action, reason in results:
            if action != "kept":
                log.event("pki", action, cert=name, reason=reason or None)
        renew.write_status(node.paths.certs, expires, 0)
        if joining:
            call_in_child(lambda: join_etcd(node), JOIN_DEADLINE + 60)
            joinsecret.forget(cfg.sources.get("token", ""))
        if restore:
            restore_etcd(node)
    # the pin a client checks the CA it is handed against (kubeadm's --discovery-token-ca-cert-hash)
    log.console(f"k4s: cluster CA {ca_hash}")
    log.record(*events.CA, hash=ca_hash)
    try:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # container shims re-parent to us, so stop can end them
    except OSError:
        pass
    watcher = (ManifestWatcher(node, [node.paths.manifests])
               if "manifests" not in cfg.disable and cfg.role == "server" else None)
    sup = Supervisor(services.build(node, names, watcher), node.paths.logs, node.paths.status)
    if cfg.role == "agent":
        sup.before_stop = lambda: tasks.drain(node)  # a worker leaving hands its pods back first
    protector = Protector(cfg.role)  # workloads cannot take the node's own processes down
    if os.getpid() == 1:  # the appliance: every component is born in the node's cgroup
        protector.enter_cgroup(meminfo()["MemTotal"] >> 10)
    sup.adopt = protector.adopt
    renewer = renew.Renewer(node, sup)
    renewer.start()
    metrics.start(node, lambda: tasks.api_client(node), sup.stop_requested, sup.call_in_child)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only flags here: the loop notices and stops everything in order.
        received.append(signum)
        sup.request_stop()

    for sig in stop_signals:
        signal.signal(sig, on_signal)
    signal.signal(signal.SIGHUP, lambda *_: renewer.wake.set())  # check the certificates now
    threading.Thread(target=log_stats, args=(sup.stop_requested, node.paths.logs), name="stats", daemon=True).start()
    if "etcd" in names:
        from k4s.cluster import etcdmembers
        from k4s.cluster.components import etcd

        threading.Thread(target=etcdmembers.defragment_on_schedule, name="etcd-defrag", daemon=True,
                         args=(etcd.CLIENT_URL, lambda: etcd.client_context(node), sup.stop_requested)).start()
    try:
        sup.run()
        if received:
            log.event("k4s", "signal", signal=signal.Signals(received[0]).name)
        return received[0] if received else 0
    finally:
        if watcher:
            watcher.stop.set()
        if balancer:
            balancer.stop()
        log.event("k4s", "stopped")
