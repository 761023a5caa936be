"""The node's service graph: every component and task, and what each waits for.

This table is the one place the start order is written. The supervisor starts
each entry once everything it waits for is ready and stops them in the reverse
of that order: kube-proxy and the kubelet first (then the pods, by the
apiserver's pre-stop), the controllers, the apiserver, etcd and containerd last.

    etcd --> node-rights                      containerd
      |         |                                 |
    kube-apiserver --> bootstrap               images (airgap import)
      |       |                                   |
      |   controller-manager, scheduler           |
      +------------------+------------------------+
                         |
                      kubelet --> node-ready
                         |
                  node-registered     flannel --> pod-network
      kube-proxy (after kube-apiserver)

flannel starts with the node and waits inside for the apiserver (to list Nodes) and for its
Node's podCIDR (its lease): its process start and its rules overlap the apiserver's start.

node-rights applies the node's own rights (its admins, flannel, kube-proxy) and its Node as soon
as the apiserver serves, while its post-start hooks run: flannel's lease does not wait for /readyz.
bootstrap applies the rest once the apiserver is ready.

node-registered is the Node with a podCIDR: a server makes its own Node with one (node-rights),
before its kubelet registers it (tasks.own_node), so its pod network waits for no controller;
a worker's comes from the controller-manager's node IPAM.

An agent (a worker) runs only the node's part: containerd, images, the kubelet,
kube-proxy, flannel and the tasks that wait for them; it has joined the cluster
before any of them start (k4s.cluster.join).

With `component-processes: shared` a component runs inside its host's process
(components.host_of): it starts and stops with the host, which then waits for
whatever its members wait for.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from k4s.cluster import components, tasks
from k4s.cluster.components import flannel, kubelet
from k4s.cluster.node import Node
from k4s.cluster.supervisor import Service, Supervisor
from k4s.sys.env import child_env

GRAPH: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("etcd", ()),
    ("containerd", ()),
    ("images", ("containerd",)),
    ("kube-apiserver", ("etcd",)),
    # the node's own rights and Node, as soon as the apiserver serves (before /readyz)
    ("node-rights", ("etcd",)),
    ("bootstrap", ("kube-apiserver", "node-rights")),
    ("kube-controller-manager", ("kube-apiserver",)),
    ("kube-scheduler", ("kube-apiserver",)),
    ("kubelet", ("containerd", "images", "kube-apiserver")),
    ("kube-proxy", ("kube-apiserver",)),
    ("node-registered", ("kubelet",)),
    # flanneld starts with the node: its process and the rules that need no API while the
    # apiserver starts; it waits for the apiserver and the podCIDR itself (build/components/kube/flannel)
    ("flannel", ()),
    ("pod-network", ("flannel",)),
    ("node-ready", ("kubelet",)),
)

# What a task talks to beyond what it waits for: node-rights starts with etcd's readiness but
# needs an apiserver on this node (an etcd-only server has none).
TASK_NEEDS = {"node-rights": ("kube-apiserver",)}

# What a result waits for beyond what it starts after: the kubelet reports its Node Ready
# only once the pod network is there (the node-ready task starts with the kubelet); flannel
# takes its lease once the Node has its podCIDR (it starts with the node).
# The apiserver is ready only with its etcd: a server that joins has etcd catch up as a learner
# first, on the apiserver's clock when etcd runs inside its process (a rejoin under load: etcd
# promoted 73 s into it, the apiserver not ready by 180 s).
RESULT_WAITS = {"node-ready": ("pod-network",), "flannel": ("node-registered",), "kube-apiserver": ("etcd",)}


def deps_ready(ready_at: Mapping[str, float | None]) -> dict[str, float | None]:
    """For each entry of GRAPH, when it could have started: when the last of what it waits for
    was ready (0 with nothing to wait for; None while something it waits for is not ready)."""
    out: dict[str, float | None] = {}
    for name, after in GRAPH:
        times = [ready_at.get(a) for a in after if a in ready_at]
        out[name] = None if any(t is None for t in times) else max(times, default=0.0)  # type: ignore[type-var]
    return out


def critical_path(ready_at: Mapping[str, float | None], last: str = "node-ready") -> list[str]:
    """The chain of waits that decided when `last` was ready: from it back, at each step the
    one of what it waits for that was ready last. A boot that got slower shows here as a
    line, which the bench and `k4s status` print."""
    path = [last]
    after = {n: (*a, *RESULT_WAITS.get(n, ())) for n, a in GRAPH}
    while deps := [d for d in after.get(path[-1], ()) if ready_at.get(d) is not None]:
        path.append(max(deps, key=lambda d: ready_at[d] or 0.0))
    return path[::-1]


# Tasks: (what runs, given the node, the manifest watcher and the components that run; how long
# it may take before the boot fails; tries before it is fatal).
Make = Callable[[Node, tasks.ManifestWatcher | None, list[str]], Callable[[Supervisor], None]]
TASKS: dict[str, tuple[Make, float, int]] = {
    "images": (lambda node, _, __: lambda sup: tasks.import_images(node, sup), 300.0, 3),
    # 300 s: a joining server's apiserver can lose its etcd majority for a while as the cluster grows
    # the apiserver's start is in its clock: it begins at etcd's readiness
    "node-rights": (lambda node, _, names: lambda sup: tasks.node_rights(node, sup, "kubelet" in names),
                    300.0, 10),
    "bootstrap": (lambda node, watcher, names: lambda sup: tasks.bootstrap(node, watcher, sup), 300.0, 10),
    # a worker's podCIDR is the controller-manager's to give: minutes on a busy control plane;
    # flannel, whose lease it is, waits as long
    "node-registered": (lambda node, _, __: lambda sup: tasks.node_registered(node, sup), flannel.READY_TIMEOUT, 3),
    "pod-network": (lambda node, _, __: lambda sup: tasks.pod_network(node, sup), 30.0, 3),
    "node-ready": (lambda node, _, __: lambda sup: tasks.wait_node_ready(node, sup), 600.0, 3),
}
# Before a component's process gets SIGTERM.
PRE_STOP: dict[str, Callable[[Supervisor], None]] = {"kube-apiserver": tasks.stop_pods}
# Once a component's process has ended, on a worker (which drains before it stops).
AGENT_POST_STOP: dict[str, Callable[[Node], Callable[[Supervisor], None]]] = {
    "kubelet": lambda node: lambda sup: tasks.report_shutdown(node)}


def selected(names: list[str]) -> list[tuple[str, tuple[str, ...]]]:
    """The graph's entries that run with these components: a task runs when all it waits for does,
    and what it talks to (TASK_NEEDS)."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for name, after in GRAPH:
        if name in names or (name in TASKS and all(a in names or a in dict(out) for a in after)
                             and all(n in names for n in TASK_NEEDS.get(name, ()))):
            out.append((name, after))
    return out


def build(node: Node, names: list[str], watcher: tasks.ManifestWatcher | None = None) -> list[Service]:
    """The supervisor's services for these components, in graph order."""
    env = child_env(node.bin_dir, node.cfg.component_gogc, gomaxprocs=node.cfg.component_gomaxprocs)
    env["NODE_NAME"] = node.cfg.node_name  # how flanneld's subnet manager finds its Node
    if node.cfg.profile:  # read by the multicall's main (build/components/kube/main.go)
        profiles = node.paths.logs / "profile"
        profiles.mkdir(parents=True, exist_ok=True)
        env |= {"K4S_PROFILE_DIR": str(profiles), "K4S_PROFILE_SECONDS": str(node.cfg.profile)}
    entries = selected(names)
    hosts = {n: components.host_of(n, node, names) for n in names}
    members = {n: [m for m in names if hosts[m] == n] for n in names}
    out: list[Service] = []
    for name, after in entries:
        if name in TASKS:
            make, timeout, tries = TASKS[name]
            out.append(Service(name, after=after, task=make(node, watcher, names), ready_timeout=timeout,
                               max_early_exits=tries))
            continue
        m = components.module(name)
        host = hosts[name]
        group = [name, *members[name]]
        own_env = env
        if name in kubelet.WITHOUT_IPTABLES:
            own_env = env | {"PATH": kubelet.path_without_iptables(node, env["PATH"])}
        # a host waits for what its members wait for; a member starts with its host
        waits = dict.fromkeys(a for e, deps in entries if e in group for a in deps)
        waits_for = tuple(a for a in waits if a not in group and a != host and a in dict(entries))
        # what it waits for inside (the apiserver for its etcd's catch-up) is on its clock too
        own = m.READY_TIMEOUT + sum(components.module(w).READY_TIMEOUT for w in RESULT_WAITS.get(name, ())
                                    if w in names and w not in TASKS)
        out.append(Service(
            name, after=() if host else waits_for, host=host, env=own_env,
            probe=lambda m=m: m.ready(node),
            argv=None if host else lambda n=name, ms=members[name]: components.group_argv(n, ms, node),
            # a member's clock starts with its host's process
            ready_timeout=own + components.module(host).READY_TIMEOUT if host else own,
            pre_stop=PRE_STOP.get(name),
            post_stop=AGENT_POST_STOP[name](node) if name in AGENT_POST_STOP and node.cfg.role == "agent" else None))
    return out
