"""The service graph: one table says what waits for what; start and stop order follow from it."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4s.cluster import services
from k4s.cluster.components import apiserver, etcd
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
    assert svcs["etcd"].ready_timeout == etcd.READY_TIMEOUT + apiserver.READY_TIMEOUT
    # and the host's includes its etcd's: a server that joins catches etcd up first
    assert svcs["kube-apiserver"].ready_timeout == apiserver.READY_TIMEOUT + etcd.READY_TIMEOUT


def test_control_plane_only_drops_the_node_tasks(tmp_path) -> None:
    names = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"]
    start, _ = order(tmp_path, "shared", names)
    assert start[:2] == ["kube-apiserver", "etcd"] and "bootstrap" in start
    assert not {"images", "node-ready", "kubelet", "containerd"} & set(start)
    assert start.index("node-rights") < start.index("bootstrap")


def test_an_etcd_only_server_runs_no_task_that_needs_an_apiserver(tmp_path) -> None:
    start, _ = order(tmp_path, "separate", ["etcd"])
    assert start == ["etcd"]


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
    assert svcs["flannel"].after == ()  # it waits for the node's podCIDR itself


def test_flannel_starts_with_the_node_and_its_lease_waits_for_the_podcidr(tmp_path) -> None:
    _, svcs = order(tmp_path, "shared", ALL)
    assert svcs["flannel"].after == () and svcs["kubelet"].after[-1:] == ("kube-apiserver",)
    assert services.RESULT_WAITS["flannel"] == ("node-registered",)


def test_without_flannel_there_is_no_pod_network_task(tmp_path) -> None:
    start, _ = order(tmp_path, "shared", [n for n in ALL if n != "flannel"])
    assert "pod-network" not in start and "node-ready" in start


class Nodes:
    """The Node objects of a cluster as kubeapi.Client.json serves them; a podCIDR is set once, a
    name made once. `racing`: a Node the kubelet registers between the list and the create."""

    def __init__(self, racing: str = "", **held: str) -> None:
        self.nodes = {n: {"metadata": {"name": n}, "spec": {"podCIDR": c} if c else {}} for n, c in held.items()}
        self.racing = racing

    def json(self, method: str, path: str, obj=None, content_type: str = ""):  # type: ignore[no-untyped-def]
        from k4s.cluster import kubeapi

        if path == "/api/v1/nodes" and method == "GET":
            return {"items": [n for n in self.nodes.values() if n["metadata"]["name"] != self.racing]}
        if path == "/api/v1/nodes" and method == "POST":
            if obj["metadata"]["name"] in self.nodes:
                raise kubeapi.APIError(409, f"nodes \"{obj['metadata']['name']}\" already exists")
            self.nodes[obj["metadata"]["name"]] = {"metadata": obj["metadata"], "spec": obj["spec"]}
            return obj
        spec = self.nodes[path.rsplit("/", 1)[1]]["spec"]
        if spec.get("podCIDR"):
            raise kubeapi.APIError(422, "spec.podCIDR: Forbidden: node updates may not change podCIDR")
        spec.update(obj["spec"])
        return {}


def test_the_server_gives_its_own_node_the_first_free_pod_cidr() -> None:
    from k4s.cluster import tasks

    api = Nodes(**{"k4s-server": "", "k4s-w1": "10.42.0.0/24", "k4s-w2": "10.42.2.0/24"})
    tasks.own_node(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"]["spec"] == {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}
    api = Nodes(**{"k4s-server": "10.42.7.0/24"})  # the controller-manager was first: it keeps its own
    tasks.own_node(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"]["spec"] == {"podCIDR": "10.42.7.0/24"}


def test_before_its_kubelet_registers_the_server_makes_its_own_node_with_its_pod_cidr() -> None:
    """At bootstrap: flannel takes its lease while the kubelet starts, and the kubelet takes the Node over."""
    from k4s.cluster import tasks

    api = Nodes(**{"k4s-w1": "10.42.0.0/24"})
    tasks.own_node(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"] == {  # flannel writes into its annotations: a Node with none panics it
        "metadata": {"name": "k4s-server", "annotations": {tasks.CONTROLLER_ATTACH_DETACH: "true"}},
        "spec": {"podCIDR": "10.42.1.0/24", "podCIDRs": ["10.42.1.0/24"]}}
    # the kubelet registered it first: no error, and it gets its podCIDR once registered
    api = Nodes(racing="k4s-server", **{"k4s-server": ""})
    tasks.own_node(api, "10.42.0.0/16", "k4s-server")  # type: ignore[arg-type]
    assert api.nodes["k4s-server"]["spec"] == {}


class Starting(Nodes):
    """An apiserver that does not listen for its first `refusals` requests, then serves (as while
    its post-start hooks run): Nodes, discovery and server-side apply."""

    def __init__(self, refusals: int, status: int = 0) -> None:
        super().__init__()
        self.refusals, self.status, self.applied, self.closed = refusals, status, [], 0

    def resources(self, api_version: str):  # type: ignore[no-untyped-def]
        from k4s.cluster import kubeapi

        if self.refusals:
            self.refusals -= 1
            if self.status:
                raise kubeapi.APIError(self.status, "refused")
            raise ConnectionRefusedError(111, "Connection refused")
        return {}

    def close(self) -> None:
        self.closed += 1

    def apply(self, obj):  # type: ignore[no-untyped-def]
        self.applied.append(obj["metadata"]["name"])
        return obj


def test_the_node_s_rights_and_node_are_made_as_soon_as_the_apiserver_serves(tmp_path, monkeypatch) -> None:
    import threading
    from types import SimpleNamespace

    from k4s import events
    from k4s.cluster import kubeapi, tasks

    n = node(tmp_path, "shared")
    sup = SimpleNamespace(stop_requested=threading.Event())
    api = Starting(refusals=3)
    monkeypatch.setattr(kubeapi.Client, "from_files", classmethod(lambda cls, *a, **k: api))
    monkeypatch.setattr(tasks, "SERVING_POLL", 0.0)
    said = []
    monkeypatch.setattr(tasks.log, "event", lambda *a, **k: said.append((a, k)))
    tasks.node_rights(n, sup, with_kubelet=True)  # type: ignore[arg-type]
    assert api.closed == 3  # a fresh connection after each refusal
    # flannel's and kube-proxy's rights and the node's admins, not the rest of the RBAC
    assert sorted(api.applied) == sorted(o["metadata"]["name"] for o in tasks.node_start_rbac())
    assert {o["metadata"]["name"] for o in tasks.node_start_rbac()} >= set(tasks.NODE_START_RBAC)
    assert api.nodes[n.cfg.node_name]["spec"]["podCIDR"] == "10.42.0.0/24"
    assert (events.NODE_RIGHTS, {"objects": len(api.applied), "node": True}) in said
    # an apiserver that answers "no" (not "not yet") fails the task at once: the supervisor says so
    api = Starting(refusals=1, status=403)
    with pytest.raises(kubeapi.APIError):
        tasks.node_rights(n, sup, with_kubelet=False)  # type: ignore[arg-type]
    # a stop while it waits ends it quietly
    api = Starting(refusals=10**6)
    sup.stop_requested.set()
    tasks.node_rights(n, sup)  # type: ignore[arg-type]
    assert api.applied == []


# a boot's first-ready times (seconds since the node started), as the supervisor records them
BOOT = {"etcd": 5.8, "containerd": 6.3, "images": 16.4, "kube-apiserver": 30.9, "bootstrap": 37.5,
        "kube-controller-manager": 32.1, "kube-scheduler": 41.0, "kubelet": 33.2, "kube-proxy": 46.4,
        "node-registered": 36.5, "flannel": 44.2, "pod-network": 44.4, "node-ready": 45.0}


def test_the_critical_path_is_the_chain_of_last_ready_waits() -> None:
    # the Node is Ready once its pod network is: flannel after the node's registration
    assert services.critical_path(BOOT) == ["etcd", "kube-apiserver", "kubelet", "node-registered", "flannel",
                                            "pod-network", "node-ready"]
    slow_images = BOOT | {"images": 35.0}  # the regression shows as a changed line
    assert services.critical_path(slow_images)[:3] == ["containerd", "images", "kubelet"]
    without_flannel = {n: t for n, t in BOOT.items() if n not in ("flannel", "pod-network")}
    assert services.critical_path(without_flannel) == ["etcd", "kube-apiserver", "kubelet", "node-ready"]


def test_each_service_could_start_once_what_it_waits_for_was_ready() -> None:
    could = services.deps_ready(BOOT)
    assert could["etcd"] == 0.0 and could["kube-apiserver"] == 5.8
    assert could["kubelet"] == 30.9  # containerd 6.3, images 16.4, the apiserver 30.9
    assert services.deps_ready(BOOT | {"kube-apiserver": None})["kubelet"] is None


def test_status_shows_when_each_could_start_did_start_and_was_ready() -> None:
    import io

    from applets.status import render

    comps = {n: {"state": "ready", "pid": 1, "restarts": 0, "ready": True, "started_after": t - 1, "ready_at": t}
             for n, t in BOOT.items()}
    out = io.StringIO()
    render({"components": comps, "boot": {"firmware": "uefi", "secure_boot": "on", "lockdown": "integrity",
                                          "pcr15": "ab" * 32}}, out)
    text = out.getvalue()
    assert f"boot: UEFI firmware, Secure Boot on, kernel lockdown integrity; TPM PCR 15 sha256:{'ab' * 32}" in text
    [kubelet] = [ln for ln in text.splitlines() if ln.startswith("kubelet ")]
    assert kubelet.split()[-3:] == ["30.9s", "32.2s", "33.2s"]
    assert ("critical path to node Ready: etcd 5.8s -> kube-apiserver 30.9s -> kubelet 33.2s -> node-registered "
            "36.5s -> flannel 44.2s -> pod-network 44.4s -> node-ready 45.0s") in text


def test_the_bench_draws_one_bar_per_service_and_marks_the_critical_path() -> None:
    import xml.etree.ElementTree as ET

    from bench import timeline

    spans = {n: {"start": t - 2.0, "ready": t} for n, t in BOOT.items()}
    root = ET.fromstring(timeline.svg(spans, 3.0, "a boot"))
    ns = "{http://www.w3.org/2000/svg}"
    bars = [r for r in root.iter(f"{ns}rect") if r.find(f"{ns}title") is not None]
    assert len(bars) == len(BOOT)
    red = {r.find(f"{ns}title").text.split(":")[0] for r in bars if r.get("fill") == "#c0392b"}
    assert red == {"etcd", "kube-apiserver", "kubelet", "node-registered", "flannel", "pod-network", "node-ready"}
    # kube-scheduler started 39.0 s, could have at 30.9 s (the apiserver ready): a wait bar
    assert any(r.get("fill") == "#f2c14e" for r in root.iter(f"{ns}rect"))


def test_k4s_profile_on_the_command_line_has_the_go_components_write_a_cpu_profile(tmp_path) -> None:
    from k4s import config

    n = node(tmp_path)
    assert "K4S_PROFILE_DIR" not in services.build(n, ALL)[0].env
    import dataclasses

    n = dataclasses.replace(n, cfg=config.replace(n.cfg, profile=config.load(config_file=None,
                                                                          cmdline="k4s.profile=45").profile))
    env = services.build(n, ALL)[0].env
    assert env["K4S_PROFILE_DIR"] == str(n.paths.logs / "profile") and env["K4S_PROFILE_SECONDS"] == "45"
    assert (n.paths.logs / "profile").is_dir()


@pytest.mark.parametrize("data", ["", "LABEL=K4SDATA"])
def test_images_on_the_data_disk_already_are_not_imported_again(tmp_path, monkeypatch, data: str) -> None:
    """A data disk's containerd holds the images of an earlier boot: a tarball whose every image
    it holds with the same digest is skipped; one that differs is imported. RAM-only, all are."""
    import dataclasses
    from types import SimpleNamespace

    from k4s.cluster import tasks

    n = node(tmp_path)
    n = dataclasses.replace(n, cfg=dataclasses.replace(n.cfg, data=data))
    n.paths.logs.mkdir(parents=True)
    tars = {tmp_path / "same.tar": ("k4s.local/pause:3.10", "sha256:aa"),
            tmp_path / "newer.tar": ("k4s.local/busybox:1.36", "sha256:bb")}
    monkeypatch.setattr(tasks, "image_tarballs", lambda node: list(tars))
    monkeypatch.setattr(tasks.oci, "read_index", lambda t: [
        {"digest": tars[t][1], "annotations": {"io.containerd.image.name": tars[t][0]}}])
    monkeypatch.setattr(tasks, "renice", lambda pid, nice: None)
    ran: list[list[str]] = []

    def run_command(argv, env, log_path, timeout=120, nice=0):  # type: ignore[no-untyped-def]
        ran.append(argv[3:])
        if argv[3:5] == ["images", "ls"]:
            log_path.write_text("REF TYPE DIGEST SIZE PLATFORMS LABELS\n"
                                "k4s.local/pause:3.10 application/vnd.oci.image.manifest.v1+json sha256:aa 300 KiB linux/amd64 -\n"
                                "k4s.local/busybox:1.36 application/vnd.oci.image.manifest.v1+json sha256:b0 1 MiB linux/amd64 -\n")
        return 0

    tasks.import_images(n, SimpleNamespace(services={"containerd": SimpleNamespace(pid=1)}, run_command=run_command))
    imported = [a[-1] for a in ran if a[:2] == ["images", "import"]]
    assert imported == ([str(tmp_path / "newer.tar")] if data else [str(t) for t in tars])
    assert (["images", "ls"] in ran) == bool(data)


def test_a_worker_s_kubelet_reports_its_shutdown_once_stopped_and_a_server_s_does_not(tmp_path) -> None:
    import dataclasses

    from k4s.cluster import services

    n = node(tmp_path)
    for role, hooked in (("agent", True), ("server", False)):
        svcs = {s.name: s for s in services.build(dataclasses.replace(n, cfg=dataclasses.replace(n.cfg, role=role)),
                                                   ALL)}
        assert (svcs["kubelet"].post_stop is not None) is hooked, role
        assert all(s.post_stop is None for name, s in svcs.items() if name != "kubelet")


@pytest.mark.parametrize("processes", ["shared", "separate"])
def test_the_kubelet_and_kube_proxy_find_no_iptables_and_the_rest_do(tmp_path, processes: str) -> None:
    """kube-proxy's clean-up of iptables leftovers and the kubelet's hint chain find an iptables
    that fails (upstream skips both then: `Present()` is false); flannel and containerd (its CNI
    plugins) find the real one."""
    import shutil
    import subprocess

    svcs = {s.name: s for s in services.build(node(tmp_path, processes), ALL) if s.host is None and s.env}
    found = {n: shutil.which("iptables", path=s.env["PATH"]) for n, s in svcs.items()}
    shadowed = {n for n, f in found.items() if f and Path(f).resolve() == Path("/bin/false").resolve()}
    assert shadowed == ({"kubelet"} if processes == "shared" else {"kubelet", "kube-proxy"}), found
    assert subprocess.run([found["kubelet"], "-t", "nat", "-S", "POSTROUTING", "1"]).returncode != 0
    assert "flannel" in svcs and "containerd" in svcs
