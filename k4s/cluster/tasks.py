"""The node's tasks: Python steps the supervisor runs in threads, in the service
graph beside the components (k4s.cluster.services). Each gets the supervisor."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml

from k4s import events, layout, log
from k4s.cluster import addons, approver, certs, copycerts, kubeapi
from k4s.cluster.components import containerd, controller_manager, flannel, kubelet
from k4s.cluster.node import Node
from k4s.cluster.supervisor import Supervisor
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import oci
from k4s.sys.env import child_env
from k4s.sys.process import renice

IMPORT_NICE = 15
PINNED = "io.cri-containerd.pinned=pinned"  # the CRI's label: the kubelet's image GC leaves the image
BOOTSTRAP_APPLIERS = 4  # bootstrap objects applied at once
POD_STOP_GRACE = 10.0  # CoreDNS's lameduck is 5 s


def api_client(node: Node) -> kubeapi.Client:
    """A server's tasks act as its admin; an agent's as the node itself (NodeRestriction holds them)."""
    if node.cfg.role == "agent":
        from urllib.parse import urlsplit

        u, pem = urlsplit(node.apiserver_url), kubelet.client_pem(node)
        return kubeapi.Client(u.hostname or "", u.port or 443,
                              kubeapi.tls_context(node.certs.crt(certs.CLUSTER_CA), pem, pem))
    return kubeapi.Client.from_files(node.certs, node.cfg.apiserver_port)


# --- images -------------------------------------------------------------------------------

def image_tarballs(node: Node) -> list[Path]:
    out = []
    for d in (layout.IMAGES, node.paths.images):
        if d.is_dir():
            out += sorted(p for p in d.iterdir() if p.suffix == ".tar")
    return out


def present_images(sup: Supervisor, ctr: list[str], env: dict[str, str], listing: Path) -> dict[str, str]:
    """name -> manifest digest of each image containerd holds already (`ctr images ls`)."""
    listing.unlink(missing_ok=True)
    if sup.run_command([*ctr, "images", "ls"], env, listing) != 0:
        return {}
    rows = (ln.split() for ln in listing.read_text(errors="replace").splitlines()[1:])
    return {r[0]: r[2] for r in rows if len(r) >= 3}


def import_argv(ctr: list[str], tar: Path) -> list[str]:
    """ctr's import of one tarball: unpacked, its layer blobs then dropped (they would stay in RAM),
    and pinned as it is imported (a `ctr images label` per image was one more process of the
    multicall each, ~1.5 s of CPU under emulation while the apiserver starts)."""
    return [*ctr, "images", "import", "--local", "--discard-unpacked-layers", f"--label={PINNED}", str(tar)]


def import_images(node: Node, sup: Supervisor) -> None:
    """Every airgap tarball into containerd's k8s.io namespace, pinned against image GC. On a
    data disk, a tarball whose every image containerd holds with the same digest (imported in an
    earlier boot) is not imported again."""
    env = child_env(node.bin_dir, node.cfg.component_gogc, gomaxprocs=node.cfg.component_gomaxprocs)
    ctr = [str(node.bin(containerd.CTR)), f"--address={node.containerd_socket}", "--namespace=k8s.io"]
    logf = node.paths.logs / "images.log"
    # Unpacking competes with the apiserver's start for the CPU, and the apiserver is on the
    # critical path to Ready: import at low priority (containerd unpacks, ctr streams).
    containerd_pid = sup.services["containerd"].pid
    renice(containerd_pid, IMPORT_NICE)
    try:
        present = present_images(sup, ctr, env, node.paths.logs / "images-present.txt") if node.cfg.data else {}
        for t in image_tarballs(node):
            digests = {n: m.get("digest") for m in oci.read_index(t)
                       if (n := (m.get("annotations") or {}).get("io.containerd.image.name"))}
            if digests and all(present.get(n) == d for n, d in digests.items()):
                log.event(*events.IMAGES_PRESENT, file=t.name, images=",".join(digests))
                continue
            rc = sup.run_command(import_argv(ctr, t), env, logf, nice=IMPORT_NICE)
            if rc != 0:
                raise K4sError(f"ctr images import {t} failed with exit code {rc}", hint=f"see {logf}")
            log.event(*events.IMAGES_IMPORTED, file=t.name, images=",".join(digests))
    finally:
        renice(containerd_pid, 0)


# --- bootstrap and the auto-deploy manifests ---------------------------------------------------

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


NODE_START_RBAC = (addons.NODE_ADMINS_BINDING, addons.FLANNEL_RBAC, addons.PROXIER_BINDING)
SERVING_POLL = 0.2  # how often node_rights asks whether the apiserver serves yet


def node_start_rbac() -> list[dict[str, Any]]:
    """What the node's own start acts through: its tasks' admin binding, flannel's and kube-proxy's
    rights (bound to system:nodes)."""
    return [o for o in addons.rbac() + addons.join_rbac() if o["metadata"]["name"] in NODE_START_RBAC]


def node_rights(node: Node, sup: Supervisor, with_kubelet: bool = True) -> None:
    """The node's own rights and its Node with a podCIDR (own_node), as soon as the apiserver
    serves: while its post-start hooks still run, before /readyz, so flannel takes its lease
    while the apiserver finishes its start instead of after it. The super-admin (system:masters)
    needs no role to exist; a binding may name a role the apiserver's hooks make later. The
    first requests are refused until the apiserver listens: asked again every SERVING_POLL."""
    client = kubeapi.Client.from_files(node.certs, node.cfg.apiserver_port, certs.SUPER_ADMIN)
    objs = node_start_rbac()
    while not sup.stop_requested.is_set():
        try:
            client.resources("rbac.authorization.k8s.io/v1")
            break
        except (OSError, kubeapi.APIError) as e:  # not listening yet, or starting (5xx)
            if isinstance(e, kubeapi.APIError) and e.status < 500:
                raise
            client.close()
            sup.stop_requested.wait(SERVING_POLL)
    else:
        return
    with ThreadPoolExecutor(max_workers=BOOTSTRAP_APPLIERS, thread_name_prefix="node-rights") as pool:
        made = pool.submit(own_node, client, node.cfg.cluster_cidr, node.cfg.node_name) if with_kubelet else None
        for _ in pool.map(client.apply, objs):
            pass
        if made is not None:
            made.result()
    log.event(*events.NODE_RIGHTS, objects=len(objs), node=with_kubelet)


def bootstrap(node: Node, watcher: ManifestWatcher | None, sup: Supervisor) -> None:
    """Once the apiserver is ready, after node_rights: the other RBAC, cluster-info, CoreDNS and
    the default StorageClass, server-side applied (idempotent, so every start re-asserts them);
    then the user's kubeconfig, the auto-deploy manifests kept applied, and workers' serving
    certificates approved (k4s.cluster.approver)."""
    # as the super-admin (system:masters), which alone may grant the admins' binding; everything
    # after bootstrap acts as the node's admin, through that binding
    client = kubeapi.Client.from_files(node.certs, node.cfg.apiserver_port, certs.SUPER_ADMIN)
    server = f"https://{node.node_ip}:{node.cfg.apiserver_port}"
    # the node's own rights are there (node_rights); the other RBAC, then namespaces before what
    # lives in them
    first = [o for o in addons.rbac() + addons.join_rbac() if o["metadata"]["name"] not in NODE_START_RBAC]
    # cluster-info names the server workers join: the first server's, which one that joined keeps
    info = [] if node.cfg.joins_control_plane else addons.cluster_info(server, node.certs.crt(certs.CLUSTER_CA).read_bytes())
    rest = info + addons.kubelet_serving_ca(node.certs.crt(certs.KUBELET_SERVING_CA).read_bytes())
    if "coredns" not in node.cfg.disable:
        rest += addons.coredns(node.cfg, Path(os.path.realpath(node.bin(addons.COREDNS))))
    if "local-path" not in node.cfg.disable:
        rest += addons.local_path(node.cfg, Path(os.path.realpath(node.bin(addons.LOCAL_PATH))), node.paths.storage)
    first += [o for o in rest if o["kind"] == "Namespace"]
    rest = [o for o in rest if o["kind"] != "Namespace"]
    # side by side: each apply waits on the apiserver, which has two CPUs
    with ThreadPoolExecutor(max_workers=BOOTSTRAP_APPLIERS, thread_name_prefix="bootstrap") as pool:
        for _ in pool.map(client.apply, first):
            pass
        log.event("bootstrap", "rbac-applied", objects=len(first))
        for _ in pool.map(client.apply, rest):
            pass
    for path in addons.REMOVED:  # what an earlier k4s applied and this one must not keep (a data disk's cluster)
        if client.delete_or_none(path) is not None:
            log.event("bootstrap", "removed", object=path)
    log.event("bootstrap", "applied", objects=len(first) + len(rest))
    dst = Path(node.cfg.write_kubeconfig)
    write_atomic(dst, node.certs.kubeconfig(certs.ADMIN).read_bytes(), 0o600)
    log.event("kubeconfig", "written", path=dst)
    if watcher is not None:
        threading.Thread(target=watcher.run, name="manifests", daemon=True).start()
    reserved = approver.Reserved.of(node.cfg, {node.node_ip})
    def uploads(client: kubeapi.Client) -> None:
        copycerts.serve_requests(client, node.certs, sup.call_in_child)

    threading.Thread(target=approver.run, args=(lambda: api_client(node), sup.call_in_child, sup.stop_requested,
                                                node.cfg.node_name, reserved, uploads), name="approver",
                     daemon=True).start()


# --- the pod network ----------------------------------------------------------------------------

CONTROLLER_ATTACH_DETACH = "volumes.kubernetes.io/controller-managed-attach-detach"


def own_node(client: kubeapi.Client, cluster_cidr: str, name: str) -> None:
    """The server's own Node gets its podCIDR as the controller-manager's node IPAM would give it
    (the first /24 of cluster-cidr no Node holds), so flannel, and so the node's Ready, need not
    wait for the controllers to start and sync. As soon as the apiserver serves (node_rights),
    before its kubelet registers, the Node is made with it: the kubelet finds it and takes it
    over, as after a restart, while flannel takes its lease. Once registered (node_registered),
    a Node without one gets it. A podCIDR is set once: if the IPAM or the kubelet was first, the
    apiserver refuses this one (the IPAM's stays; a Node the kubelet made gets one once
    registered)."""
    import ipaddress

    nodes = client.json("GET", "/api/v1/nodes").get("items", [])
    mine = next((n for n in nodes if n.get("metadata", {}).get("name") == name), None)
    if mine is not None and mine.get("spec", {}).get("podCIDR"):
        return
    held = {n.get("spec", {}).get("podCIDR") for n in nodes}
    free = next((str(s) for s in ipaddress.ip_network(cluster_cidr).subnets(new_prefix=controller_manager.NODE_CIDR_PREFIX)
                 if str(s) not in held), None)
    if free is None:
        return  # the network is full: the IPAM says so on the Node
    spec = {"podCIDR": free, "podCIDRs": [free]}
    try:
        if mine is None:
            # with the annotation the kubelet registers with (it reconciles it): flannel writes its
            # lease into the Node's annotations, and one with none panics it (v0.28.10, kube.go:431)
            client.json("POST", "/api/v1/nodes", {"apiVersion": "v1", "kind": "Node", "spec": spec, "metadata": {
                "name": name, "annotations": {CONTROLLER_ATTACH_DETACH: "true"}}})
            log.event("node", "created", node=name, pod_cidr=free, reason="its kubelet takes it over")
        else:
            client.json("PATCH", f"/api/v1/nodes/{name}", {"spec": spec},
                        content_type="application/strategic-merge-patch+json")
    except kubeapi.APIError as e:
        if e.status not in (409, 422):
            raise


PODCIDR_PATIENCE = 60.0  # then the console says what the node waits for


def node_registered(node: Node, sup: Supervisor) -> None:
    """Block until the Node is there with a podCIDR: flannel's lease is that podCIDR. A server's
    own (own_node) is made once the apiserver serves (node_rights), or given one here if its
    kubelet registered it first; a worker's is registered by its kubelet and given one by the
    controller-manager's IPAM."""
    client = api_client(node)
    said, started, last = False, time.monotonic(), ""
    while not sup.stop_requested.is_set():
        if not said and time.monotonic() - started > PODCIDR_PATIENCE:
            said = True  # once: what a waiting worker is waiting for
            log.console(f"k4s: node {node.cfg.node_name} has no podCIDR after {PODCIDR_PATIENCE:.0f} s: "
                        "the controller-manager's IPAM gives it; waiting")
        try:
            obj = client.json("GET", f"/api/v1/nodes/{node.cfg.node_name}")
            if not obj.get("spec", {}).get("podCIDR") and node.cfg.role == "server":
                own_node(client, node.cfg.cluster_cidr, node.cfg.node_name)
                obj = client.json("GET", f"/api/v1/nodes/{node.cfg.node_name}")
            if obj.get("spec", {}).get("podCIDR"):
                log.event("node", "registered", node=node.cfg.node_name, pod_cidr=obj["spec"]["podCIDR"])
                if DRAINED_ANNOTATION in (obj["metadata"].get("annotations") or {}):
                    # a worker back from its own shutdown: schedulable again (not a cordon an operator made)
                    client.json("PATCH", f"/api/v1/nodes/{node.cfg.node_name}",
                                {"metadata": {"annotations": {DRAINED_ANNOTATION: None}}, "spec": {"unschedulable": None}},
                                content_type="application/strategic-merge-patch+json")
                    log.event("node", "uncordoned", node=node.cfg.node_name, reason="rejoined after its drain")
                return
        except (OSError, K4sError) as e:
            if str(e) != last:  # what it waits on, once per change (debug)
                last = str(e)
                log.event("node-registered", "waiting", level="debug", error=last)
        sup.stop_requested.wait(0.5)
    raise K4sError("stopped before the node was registered")


def pod_network(node: Node, sup: Supervisor) -> None:
    """The CNI network from flannel's lease: the kubelet reports the node Ready once it exists."""
    subnet = flannel.write_cni_conf(node)
    log.event("flannel", "network", subnet=subnet, backend=flannel.BACKEND)


# --- readiness of the whole node ------------------------------------------------------------------

def wait_node_ready(node: Node, sup: Supervisor) -> None:
    """Block until the Node object reports Ready (a task: the supervisor retries it)."""
    import datetime as dt

    client = api_client(node)
    stop = sup.stop_requested
    # a Node object from an earlier boot (a worker rejoining) can still say Ready: only a status
    # this boot's kubelet posted counts (its own clock wrote the heartbeat)
    started = dt.datetime.fromtimestamp(int(time.time() - (time.monotonic() - sup.t0)), dt.UTC)
    while not stop.is_set():
        try:
            obj = client.json("GET", f"/api/v1/nodes/{node.cfg.node_name}")
            conds = {c["type"]: c for c in obj.get("status", {}).get("conditions", [])}
            ready = conds.get("Ready", {})
            beat = dt.datetime.fromisoformat(ready.get("lastHeartbeatTime", "1970-01-01T00:00:00Z").replace("Z", "+00:00"))
            if ready.get("status") == "True" and beat >= started:
                log.console(f"k4s: node {node.cfg.node_name} Ready")
                log.record(*events.NODE_READY, node=node.cfg.node_name)
                if "coredns" not in node.cfg.disable:
                    threading.Thread(target=wait_coredns, args=(client, stop), name="coredns", daemon=True).start()
                return
        except (OSError, K4sError):
            pass
        stop.wait(1.0)
    raise K4sError("stopped before the node was Ready")


def wait_coredns(client: kubeapi.Client, stop: threading.Event) -> None:
    """Log when CoreDNS is available: the last step of the boot timeline."""
    while not stop.is_set():
        try:
            d = client.json("GET", "/apis/apps/v1/namespaces/kube-system/deployments/coredns")
            if d.get("status", {}).get("availableReplicas", 0) >= 1:
                log.event(*events.COREDNS_READY)
                return
        except (OSError, K4sError):
            pass
        stop.wait(1.0)


DRAIN_DEADLINE = 40.0  # past the default 30 s grace period of a pod
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
DRAINED_ANNOTATION = "k4s.dev/drained"  # cordoned by its own shutdown: uncordoned when it joins again


def drain(node: Node, deadline: float = DRAIN_DEADLINE) -> None:
    """A worker leaving (the power button): cordon its Node, evict its pods (DaemonSet and
    static pods stay, as `kubectl drain` does) and wait for them to go, within deadline,
    while the kubelet still runs to stop them gracefully. As the node itself: NodeRestriction
    lets it cordon and evict only what is its own."""
    client, name = api_client(node), node.cfg.node_name
    end = time.monotonic() + deadline
    client.json("PATCH", f"/api/v1/nodes/{name}",
                {"metadata": {"annotations": {DRAINED_ANNOTATION: "shutdown"}}, "spec": {"unschedulable": True}},
                content_type="application/strategic-merge-patch+json")
    pods = client.json("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{name}")["items"]

    def evictable(p: dict) -> bool:
        owners = p["metadata"].get("ownerReferences") or []
        return (p.get("status", {}).get("phase") not in ("Succeeded", "Failed")
                and MIRROR_ANNOTATION not in (p["metadata"].get("annotations") or {})
                and not any(o.get("kind") == "DaemonSet" for o in owners))

    pending = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in pods if evictable(p)}
    log.event("drain", "started", node=name, pods=len(pending))
    asked: set[tuple[str, str]] = set()
    while pending and time.monotonic() < end:
        for ns, pod in sorted(pending - asked):
            try:
                client.json("POST", f"/api/v1/namespaces/{ns}/pods/{pod}/eviction",
                            {"apiVersion": "policy/v1", "kind": "Eviction", "metadata": {"name": pod, "namespace": ns}})
                asked.add((ns, pod))
            except kubeapi.APIError as e:
                if e.status == 404:
                    asked.add((ns, pod))
                elif e.status != 429:  # 429: a PodDisruptionBudget says not yet; asked again
                    raise
        left = {(p["metadata"]["namespace"], p["metadata"]["name"]) for p in
                client.json("GET", f"/api/v1/pods?fieldSelector=spec.nodeName%3D{name}")["items"]}
        pending &= left
        if pending:
            time.sleep(0.5)
    if pending:
        log.event("drain", "timeout", level="warn", node=name, left=len(pending), deadline=f"{deadline:.0f}s")
    else:
        log.event("drain", "done", node=name, evicted=len(asked))


def report_shutdown(node: Node) -> None:
    """A worker powering off, once its kubelet has stopped: its Node's Ready condition False with
    the reason and message the kubelet's graceful node shutdown gives, at once, rather than
    Unknown after the node controller's grace period (50 s) of a silent lease."""
    import datetime as dt

    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    name = node.cfg.node_name
    api_client(node).json("PATCH", f"/api/v1/nodes/{name}/status", {"status": {"conditions": [
        {"type": "Ready", "status": "False", "reason": "KubeletNotReady", "message": approver.SHUTTING_DOWN,
         "lastHeartbeatTime": now, "lastTransitionTime": now}]}},
        content_type="application/strategic-merge-patch+json")
    log.event("node", "shutdown-reported", node=name)


def stop_pods(sup: Supervisor) -> None:
    """Before the apiserver stops (the kubelet already has): the pods' processes get TERM, then
    KILL, as Talos stops pods before the control plane. Their open watches (CoreDNS's) would
    otherwise hold the apiserver's graceful shutdown until it is killed."""
    n = sup.kill_descendants(POD_STOP_GRACE, spare_services=True)
    if n:
        log.event("pods", "stopped", processes=n)
