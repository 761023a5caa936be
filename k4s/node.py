"""The single-node cluster: turn the Config into supervised services, check the
host first, import the airgap images, bootstrap the cluster, keep the
auto-deploy manifests applied.

Used by `k4s server` on a host and by `init` on the appliance.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import select
import signal
import socket
import threading
import time
from pathlib import Path

import yaml

from k4s import addons, components, kubeapi, log, oci
from k4s.components import Node
from k4s.config import Config
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.paths import IMAGES, Paths
from k4s.supervisor import Service, Supervisor, renice

IMPORT_NICE = 15

CONTROL_PLANE = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
NODE_HELPERS = ("containerd-shim-runc-v2", "runc", "ctr", "bridge", "host-local", "loopback", "portmap")
# Who listens where: preflight refuses to start when one is taken.
PORTS = {
    "etcd": [("127.0.0.1", 2379), ("127.0.0.1", 2380), ("127.0.0.1", 2381)],
    "kube-apiserver": [("0.0.0.0", None)],
    "kube-controller-manager": [("127.0.0.1", 10257)],
    "kube-scheduler": [("127.0.0.1", 10259)],
    "kubelet": [("127.0.0.1", 10248), ("0.0.0.0", 10250)],
    "kube-proxy": [("127.0.0.1", 10256), ("127.0.0.1", 10249)],
}
READY_TIMEOUT = {"etcd": 60.0, "kube-apiserver": 180.0, "kubelet": 180.0}


def ready_timeout(name: str, host: str | None) -> float:
    """From the start of its process: a member's clock starts with its host's."""
    own = READY_TIMEOUT.get(name, 120.0)
    return own + READY_TIMEOUT.get(host, 120.0) if host else own


def make_node(cfg: Config) -> Node:
    from k4s.netinfo import node_address

    iface, ip = node_address(cfg.node_ip, cfg.interface)
    return Node(cfg, Paths.of(cfg.data_dir, cfg.run_dir), ip, iface, Path(cfg.bin_dir))


def selected(control_plane_only: bool, cfg: Config) -> list[str]:
    return [n for n in components.ORDER
            if not (control_plane_only and components.module(n).NODE) and n not in cfg.disable]


# --- preflight: every check before anything starts, so a failure leaves nothing running ---

def cgroup2_mounted(mounts: str | None = None) -> bool:
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts.splitlines() if line.strip())


def port_owner(port: int) -> str:
    import psutil

    try:
        for c in psutil.net_connections("tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" by pid {c.pid} ({psutil.Process(c.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_port(host: str, port: int, who: str) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise K4sError(f"port {port} ({who}) is already in use{port_owner(port)}",
                               hint="stop the other server (another k4s or Kubernetes?) or change the port") from None
            raise


def preflight(node: Node, names: list[str]) -> None:
    if os.geteuid() != 0:
        raise K4sError("k4s server must run as root", hint="run it with sudo")
    needed = [components.module(n).BINARY for n in names]
    if "kubelet" in names:
        needed += list(NODE_HELPERS)
    for b in needed:
        p = node.bin(b)
        if not os.access(p, os.X_OK):
            raise K4sError(f"component binary {p} is missing or not executable",
                           hint="build the components (make components) and set bin-dir to out/components/bin")
    if "kubelet" in names and not cgroup2_mounted():
        raise K4sError("cgroup v2 is not mounted at /sys/fs/cgroup; kubelet requires it",
                       hint="boot the host with systemd.unified_cgroup_hierarchy=1, or run --control-plane-only")
    for n in names:
        for host, port in PORTS.get(n, []):
            check_port(host, port or node.cfg.apiserver_port, n)


# --- tasks -------------------------------------------------------------------------------

def image_dirs(node: Node) -> list[Path]:
    return [IMAGES, node.paths.data / "images"]


def image_tarballs(node: Node) -> list[Path]:
    out = []
    for d in image_dirs(node):
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.suffix == ".tar")
    return out


def import_images(node: Node, sup: Supervisor) -> None:
    """Every airgap tarball into containerd's k8s.io namespace, pinned against image GC."""
    env = components.child_env(node.bin_dir, node.cfg.component_gogc)
    ctr = [str(node.bin("ctr")), f"--address={node.containerd_socket}", "--namespace=k8s.io"]
    logf = node.paths.logs / "images.log"
    # Unpacking competes with the apiserver's start for the CPU, and the apiserver is on the
    # critical path to Ready: import at low priority (containerd unpacks, ctr streams).
    containerd_pid = sup.services["containerd"].pid
    renice(containerd_pid, IMPORT_NICE)
    try:
        for t in image_tarballs(node):
            names = [m.get("annotations", {}).get("io.containerd.image.name") for m in oci.read_index(t)]
            rc = sup.run_command([*ctr, "images", "import", "--local", "--discard-unpacked-layers", str(t)], env,
                                 logf, nice=IMPORT_NICE)
            if rc != 0:
                raise K4sError(f"ctr images import {t} failed with exit code {rc}", hint=f"see {logf}")
            for n in filter(None, names):
                sup.run_command([*ctr, "images", "label", n, "io.cri-containerd.pinned=pinned"], env, logf)
            log.event("images", "imported", file=t.name, images=",".join(filter(None, names)))
    finally:
        renice(containerd_pid, 0)


def api_client(node: Node) -> kubeapi.Client:
    return kubeapi.Client.from_pki(node.pki, node.cfg.apiserver_port)


def bootstrap(node: Node) -> None:
    """RBAC and CoreDNS, server-side applied (idempotent, so every start re-asserts them)."""
    client = api_client(node)
    objs = addons.rbac()
    if "coredns" not in node.cfg.disable:
        objs += addons.coredns(node.cfg, Path(os.path.realpath(node.bin("coredns"))))
    for obj in objs:
        client.apply(obj)
    log.event("bootstrap", "applied", objects=len(objs))


def write_user_kubeconfig(node: Node) -> None:
    src = node.paths.admin_kubeconfig
    dst = Path(node.cfg.write_kubeconfig)
    write_atomic(dst, src.read_bytes(), 0o600)
    log.event("kubeconfig", "written", path=dst)


class ManifestWatcher:
    """Applies every YAML in the auto-deploy directories at start and whenever one changes."""

    def __init__(self, node: Node, dirs: list[Path], interval: float = 5.0) -> None:
        self.node, self.dirs, self.interval = node, dirs, interval
        self.seen: dict[Path, str] = {}
        self.stop = threading.Event()

    def files(self) -> list[Path]:
        out = []
        for d in self.dirs:
            if d.is_dir():
                out += sorted(p for p in d.iterdir() if p.suffix in (".yaml", ".yml", ".json") and p.is_file())
        return out

    def scan(self) -> int:
        applied = 0
        client = api_client(self.node)
        for f in self.files():
            try:
                raw = f.read_bytes()
            except OSError:
                continue
            digest = hashlib.sha256(raw).hexdigest()
            if self.seen.get(f) == digest:
                continue
            try:
                docs = [d for d in yaml.safe_load_all(raw) if d]
                for d in docs:
                    if not isinstance(d, dict):
                        raise K4sError("a document is not a mapping", hint="each YAML document must be an object")
                    items = d.get("items", []) if d.get("kind", "").endswith("List") else [d]
                    for obj in items:
                        client.apply(obj)
                self.seen[f] = digest
                applied += 1
                log.event("manifests", "applied", file=f.name, objects=len(docs))
            except (yaml.YAMLError, K4sError, OSError) as e:
                self.seen[f] = digest  # retried when the file changes again
                msg = e.message if isinstance(e, K4sError) else str(e).replace("\n", " ")
                log.event("manifests", "error", level="error", file=f.name, error=msg)
        return applied

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.scan()
            except (OSError, K4sError) as e:
                log.event("manifests", "scan-failed", level="warn", error=str(e))
            self.stop.wait(self.interval)


# --- the services ------------------------------------------------------------------------

def services(node: Node, names: list[str], sup_box: list[Supervisor]) -> list[Service]:
    env = components.child_env(node.bin_dir, node.cfg.component_gogc)
    out: list[Service] = []
    hosts = {n: components.host_of(n, node, names) for n in names}
    for n in names:
        m = components.module(n)
        after = tuple(a for a in m.AFTER if a in names and hosts[a] != n)  # its members start with it
        if n == "kubelet":
            after += ("images",)
        members = [x for x in names if hosts[x] == n]
        out.append(Service(n, after=after, host=hosts[n], probe=lambda m=m: m.ready(node),
                           argv=None if hosts[n] else lambda n=n, ms=members: components.group_argv(n, ms, node),
                           env=env, ready_timeout=ready_timeout(n, hosts[n]),
                           pre_stop=(lambda: stop_pods(sup_box[0])) if n == "kube-apiserver" else None))
        if n == "containerd":
            out.append(Service("images", after=("containerd",), task=lambda: import_images(node, sup_box[0]),
                               ready_timeout=300.0, max_early_exits=3))
    out.append(Service("bootstrap", after=("kube-apiserver",), task=lambda: bootstrap(node), max_early_exits=10))
    return out


POD_STOP_GRACE = 10.0  # CoreDNS's lameduck is 5 s


def stop_pods(sup: Supervisor) -> None:
    """Before the apiserver stops (the kubelet already has): the pods' processes get TERM, then
    KILL, as Talos stops pods before the control plane. Their open watches (CoreDNS's) would
    otherwise hold the apiserver's graceful shutdown until it is killed."""
    n = sup.kill_descendants(POD_STOP_GRACE, spare_services=True)
    if n:
        log.event("pods", "stopped", processes=n)


PKI_TIMEOUT = 120.0  # key generation under emulation takes seconds, not minutes


def ensure_pki(cfg: Config) -> list[tuple[str, str, str]]:
    """Create or renew the certificates in a forked child: (name, action, reason) for each.

    The job runs once per start, and importing cryptography for it would keep ~4 MiB in
    this long-lived process (PID 1 on the appliance). It runs before the supervisor has
    started any child, so this waitpid steals no one's exit status. On the appliance the
    DHCP and power-button threads exist already; the child only imports, computes and
    writes to a pipe, and PKI_TIMEOUT bounds the wait should it ever hang."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            from k4s import pki

            res = [(x.name, x.action, x.reason) for x in pki.for_config(cfg).ensure(pki.identity_for(cfg))]
            reply: dict = {"results": res}
        except K4sError as e:
            reply = {"error": e.message, "hint": e.hint}
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            reply = {"error": f"{type(e).__name__}: {e}", "hint": "this is a bug in k4s; please report it"}
        try:
            with os.fdopen(w, "w") as f:
                json.dump(reply, f)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(w)
    raw, end = b"", time.monotonic() + PKI_TIMEOUT
    with os.fdopen(r, "rb") as f:
        while time.monotonic() < end and select.select([f], [], [], end - time.monotonic())[0]:
            chunk = f.read1(65536)
            if not chunk:
                break
            raw += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(raw)
    except ValueError:
        raise K4sError(f"the PKI step died ({os.waitstatus_to_exitcode(status)})",
                       hint="run `k4s pki init` to see its error") from None
    if "error" in reply:
        raise K4sError(f"PKI: {reply['error']}", hint=reply.get("hint"))
    return [tuple(x) for x in reply["results"]]


def wait_node_ready(node: Node, stop: threading.Event) -> None:
    """Block until the Node object reports Ready (a task: the supervisor retries it)."""
    client = api_client(node)
    while not stop.is_set():
        try:
            obj = client.json("GET", f"/api/v1/nodes/{node.cfg.node_name}")
            conds = {c["type"]: c["status"] for c in obj.get("status", {}).get("conditions", [])}
            if conds.get("Ready") == "True":
                log.console(f"k4s: node {node.cfg.node_name} Ready")
                if "coredns" not in node.cfg.disable:
                    threading.Thread(target=wait_coredns, args=(client, stop), name="coredns", daemon=True).start()
                return
        except (OSError, K4sError):
            pass
        stop.wait(1.0)
    raise K4sError("stopped before the node was Ready")


def meminfo(text: str | None = None) -> dict[str, int]:
    """/proc/meminfo as {field: KiB}."""
    if text is None:
        text = Path("/proc/meminfo").read_text()
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if value := rest.split():
            out[key] = int(value[0])
    return out


def memory_summary(mi: dict[str, int]) -> dict[str, int]:
    """Where the used RAM goes, in MiB: used = MemTotal - MemAvailable (the idle-RAM figure),
    anon (process heaps), shmem (tmpfs: the unpacked root, containerd's snapshots, etcd),
    kernel (unreclaimable slab, stacks, page tables)."""
    kernel = mi.get("SUnreclaim", 0) + mi.get("KernelStack", 0) + mi.get("PageTables", 0)
    return {"mem_used_mib": (mi["MemTotal"] - mi["MemAvailable"]) >> 10, "anon_mib": mi.get("AnonPages", 0) >> 10,
            "shmem_mib": mi.get("Shmem", 0) >> 10, "kernel_mib": kernel >> 10, "mem_total_mib": mi["MemTotal"] >> 10}


def log_stats(stop: threading.Event, log_dir: Path | None = None, every: float = 30.0) -> None:
    """A line of memory and load every `every` seconds."""
    while not stop.wait(every):
        try:
            mi = meminfo()
        except (OSError, ValueError):
            continue  # no /proc: nothing to report
        log.event("k4s", "stats", **memory_summary(mi), load1=f"{os.getloadavg()[0]:.2f}")
        if log_dir is not None:
            write_memory_report(log_dir / "memory.txt", mi)


def anon_by_process() -> list[tuple[int, int, str]]:
    """(RssAnon KiB, pid, name) of every process, biggest first: the part of a process's RSS that
    page reclaim cannot drop (its text pages are file-backed and count as available)."""
    rows = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "RssAnon" in fields:
            rows.append((int(fields["RssAnon"].split()[0]), int(d.name), fields["Name"].strip()))
    return sorted(rows, reverse=True)


def write_memory_report(path: Path, mi: dict[str, int]) -> None:
    """The memory summary and the processes by anonymous RSS: what `make bench` reads for the breakdown."""
    summary = " ".join(f"{k}={v}" for k, v in memory_summary(mi).items())
    lines = [f"{kib >> 10:>6} MiB  {pid:>6}  {name}" for kib, pid, name in anon_by_process()[:20]]
    try:
        write_atomic(path, summary + "\n\nRssAnon by process:\n" + "\n".join(lines) + "\n")
    except K4sError:
        pass


def wait_coredns(client: kubeapi.Client, stop: threading.Event) -> None:
    """Log when CoreDNS is available: the last step of the boot timeline."""
    while not stop.is_set():
        try:
            d = client.json("GET", "/apis/apps/v1/namespaces/kube-system/deployments/coredns")
            if d.get("status", {}).get("availableReplicas", 0) >= 1:
                log.event("coredns", "ready")
                return
        except (OSError, K4sError):
            pass
        stop.wait(1.0)


def run_server(cfg: Config, control_plane_only: bool,
               stop_signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Bring the node up and supervise it until one of stop_signals arrives; return that signal.

    Raises K4sError on a fatal failure, after stopping whatever had started.
    """
    from k4s import libc

    paths = Paths.of(cfg.data_dir, cfg.run_dir)
    log.setup(paths.logs, cfg.log_level)
    node = make_node(cfg)
    names = selected(control_plane_only, cfg)
    log.event("k4s", "starting", node=cfg.node_name, ip=node.node_ip, components=",".join(names))
    preflight(node, names)
    for name, action, reason in ensure_pki(cfg):
        if action != "kept":
            log.event("pki", action, cert=name, reason=reason or None)
    try:
        libc.prctl(libc.PR_SET_CHILD_SUBREAPER, 1)  # container shims re-parent to us, so stop can end them
    except OSError:
        pass
    box: list[Supervisor] = []
    svcs = services(node, names, box)
    watcher = ManifestWatcher(node, [paths.manifests]) if "manifests" not in cfg.disable else None
    if "kubelet" in names:
        svcs.append(Service("node-ready", after=("kubelet",), task=lambda: wait_node_ready(node, sup.stop_requested),
                            ready_timeout=600.0, max_early_exits=3))

    def on_ready(s: Service) -> None:
        if s.name == "bootstrap":
            write_user_kubeconfig(node)
            if watcher:
                threading.Thread(target=watcher.run, name="manifests", daemon=True).start()

    sup = Supervisor(svcs, paths.logs, paths.status, on_ready=on_ready)
    box.append(sup)
    received: list[int] = []

    def on_signal(signum: int, _frame: object) -> None:
        # Only flags here: the loop notices and stops everything in order.
        received.append(signum)
        sup.request_stop()

    for sig in stop_signals:
        signal.signal(sig, on_signal)
    threading.Thread(target=log_stats, args=(sup.stop_requested, paths.logs), name="stats", daemon=True).start()
    try:
        sup.run()
        if received:
            log.event("k4s", "signal", signal=signal.Signals(received[0]).name)
        return received[0] if received else 0
    finally:
        if watcher:
            watcher.stop.set()
        log.event("k4s", "stopped")
