"""The service graph: one table says what waits for what; start and stop order follow from it."""

from __future__ import annotations

import pytest

from k4s.cluster import services
from k4s.cluster.supervisor import Service, start_order
from tests.unit.test_components import ALL, node


def order(tmp_path, processes: str, names: list[str]) -> tuple[list[str], dict[str, Service]]:
    svcs = services.build(node(tmp_path, processes), names)
    return start_order(svcs), {s.name: s for s in svcs}


def test_every_service_starts_after_what_it_waits_for_and_stops_before_it(tmp_path) -> None:
    start, svcs = order(tmp_path, "separate", ALL)
    assert set(start) == {n for n, _ in services.GRAPH}
    for name, after in services.GRAPH:
        for dep in after:
            assert start.index(dep) < start.index(name), (dep, name)
    stop = start[::-1]
    assert stop.index("kubelet") < stop.index("kube-apiserver") < stop.index("etcd")
    assert stop.index("kube-scheduler") < stop.index("kube-apiserver")
    assert svcs["kube-apiserver"].pre_stop is not None  # the pods stop before the apiserver


def test_shared_process_host_waits_for_its_members_dependencies(tmp_path) -> None:
    _, svcs = order(tmp_path, "shared", ALL)
    assert svcs["etcd"].host == "kube-apiserver" and svcs["kube-proxy"].host == "kubelet"
    assert "etcd" not in svcs["kube-apiserver"].after  # it runs inside
    assert svcs["kubelet"].after == ("containerd", "images", "kube-apiserver")
    # a member's readiness clock starts with its host's process
    assert svcs["etcd"].ready_timeout == 60.0 + 180.0


def test_control_plane_only_drops_the_node_tasks(tmp_path) -> None:
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    start, _ = order(tmp_path, "shared", names)
    assert start[:2] == ["kube-apiserver", "etcd"] and "bootstrap" in start
    assert not {"images", "node-ready", "kubelet", "containerd"} & set(start)


def test_a_cycle_or_an_unknown_dependency_is_refused() -> None:
    with pytest.raises(ValueError, match="wait for each other"):
        start_order([Service("a", after=("b",)), Service("b", after=("a",))])
    with pytest.raises(ValueError, match="unknown services"):
        start_order([Service("a", after=("nope",))])


def test_an_agent_runs_the_node_part_and_its_pod_network(tmp_path) -> None:
    from k4s import config
    from k4s.cluster.server import selected

    cfg = config.load(config_file=None, cmdline="k4s.role=agent k4s.server=https://10.77.0.1:6443 "
                      "k4s.ca-hash=sha256:" + "a" * 64, overrides={"token": "abcdef.0123456789abcdef"})
    names = selected(False, cfg)
    assert names == ["containerd", "kubelet", "kube-proxy", "flannel"]
    start, svcs = order(tmp_path, "shared", names)
    assert start.index("kubelet") < start.index("node-registered") < start.index("flannel") < start.index("pod-network")
    assert "bootstrap" not in start and svcs["kubelet"].after == ("containerd", "images")


def test_without_flannel_there_is_no_pod_network_task(tmp_path) -> None:
    start, _ = order(tmp_path, "shared", [n for n in ALL if n != "flannel"])
    assert "pod-network" not in start and "node-ready" in start


class Nodes:
    """The Node objects of a cluster as kubeapi.Client.json serves them; a podCIDR is set once."""

    def __init__(self, **held: str) -> None:
        self.nodes = {n: {"metadata": {"name": n}, "spec": {"podCIDR": c} if c else {}} for n, c in held.items()}

    def json(self, method: str, path: str, obj=None, content_type: str = ""):  # type: ignore[no-untyped-def]
        from k4s.cluster import kubeapi

        if path == "/api/v1/nodes":
            return {"items": list(self.nodes.values())}
        spec = self.nodes[path.rsplit("/", 1)[1]]["spec"]
        if spec.get("podCIDR"):
            raise kubeapi.APIError(422, "spec.podCIDR: Forbidden: node updates may not change podCIDR")
        spec.update(obj["spec"])
        return {}


def test_the_server_gives_its_own_node_the_first_free_pod_cidr() -> None:
    from k4s.cluster import tasks

    api = Nodes(**{"k4s-server": "", "k4s-w1": "10.42.0.0/24", "k4s-w2": "10.42.2.0/24"})
    tasks.own_pod_cidr(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"]["spec"] == {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}
    api = Nodes(**{"k4s-server": "10.42.7.0/24"})  # the controller-manager was first: it keeps its own
    tasks.own_pod_cidr(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"]["spec"] == {"podCIDR": "10.42.7.0/24"}
