"""Which components share a process, and the command line of a shared one."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4s import config
from k4s.cluster import certs, components
from k4s.cluster.node import Node
from k4s.errors import K4sError
from k4s.layout import Paths

ALL = list(components.NAMES)


def node(tmp_path: Path, processes: str = "shared", separate_binaries: bool = False, **more: str) -> Node:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "kube").touch()
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy"):
        if separate_binaries:
            (bin_dir / name).touch()
        else:
            (bin_dir / name).symlink_to("kube")
    cfg = config.load(config_file=None, cmdline="", overrides={
        "data-dir": str(tmp_path / "data"), "run-dir": str(tmp_path / "run"), "bin-dir": str(bin_dir),
        "component-processes": processes, "node-name": "n1", **more})
    return Node(cfg, Paths.of(cfg.data_dir, cfg.run_dir), "10.0.2.15", "eth0", bin_dir)


def hosts(n: Node, names: list[str]) -> dict[str, str]:
    return {name: h for name in names if (h := components.host_of(name, n, names))}


def test_multicall_shares_control_plane_and_node_processes(tmp_path) -> None:
    assert hosts(node(tmp_path), ALL) == {
        "etcd": "kube-apiserver", "kube-controller-manager": "kube-apiserver", "kube-scheduler": "kube-apiserver", "kube-proxy": "kubelet"}


JOINS = {"server": "https://10.77.0.11:6443", "token": "abcdef.0123456789abcdef",
         "ca-hash": "sha256:" + "ab" * 32, "certificate-key": "cd" * 32}


@pytest.mark.parametrize("more", [{"cluster-init": "1"}, JOINS], ids=["first", "joining"])
def test_elected_controllers_take_turns_in_a_process_apart_from_the_apiserver(tmp_path, more) -> None:
    n = node(tmp_path, **more)
    # a lost lease ends the process: the scheduler's and controller-manager's, never etcd's
    assert hosts(n, ALL) == {"etcd": "kube-apiserver", "kube-scheduler": "kube-controller-manager",
                             "kube-proxy": "kubelet"}
    argv = components.group_argv("kube-controller-manager", ["kube-scheduler"], n)
    assert argv.count("--leader-elect=true") == 2 and "--leader-elect=false" not in argv
    assert argv.count(f"--leader-elect-renew-deadline={components.RENEW_DEADLINE}") == 2
    assert argv[argv.index(components.EMBED_MARK) + 1] == "kube-scheduler"


def test_a_server_alone_writes_no_lease(tmp_path) -> None:
    n = node(tmp_path)
    for name in ("kube-controller-manager", "kube-scheduler"):
        assert "--leader-elect=false" in components.argv(name, n)
        assert not any(a.startswith("--leader-elect-") for a in components.argv(name, n))


@pytest.mark.parametrize("processes, separate_binaries", [("separate", False), ("shared", True)])
def test_separate_when_asked_or_when_the_binaries_differ(tmp_path, processes, separate_binaries) -> None:
    assert hosts(node(tmp_path, processes, separate_binaries), ALL) == {}


def test_a_member_without_its_host_runs_alone(tmp_path) -> None:
    # kube-proxy on a node whose kubelet is not run by k4s
    assert hosts(node(tmp_path), ["kube-apiserver", "kube-proxy"]) == {}


def test_group_command_line_is_each_component_after_a_plus(tmp_path) -> None:
    n = node(tmp_path)
    argv = components.group_argv("kube-apiserver", ["kube-controller-manager", "kube-scheduler"], n)
    assert argv[0] == str(n.bin("kube-apiserver"))
    cut = [i for i, a in enumerate(argv) if a == components.EMBED_MARK]
    assert [argv[i + 1] for i in cut] == ["kube-controller-manager", "kube-scheduler"]
    scheduler = argv[cut[1] + 2:]
    assert scheduler == components.argv("kube-scheduler", n)[1:]
    assert "--secure-port=10259" in scheduler
    # served with the cluster CA's certificate, not a self-signed RSA key made at every start
    manager = argv[cut[0] + 2:cut[1]]
    for args, leaf in ((scheduler, certs.SCHEDULER_SERVING), (manager, certs.CONTROLLER_MANAGER_SERVING)):
        assert f"--tls-cert-file={n.certs.crt(leaf)}" in args and f"--tls-private-key-file={n.certs.key(leaf)}" in args


# --- one owner per fact -----------------------------------------------------------------

EMBED_GO = Path(__file__).resolve().parents[2] / "build" / "components" / "kube" / "embed.go"


def test_which_components_can_share_a_process_matches_the_go_build() -> None:
    import re

    table = EMBED_GO.read_text().split("var embeddable = map[string]", 1)[1].split("\n}\n", 1)[0]
    in_go = set(re.findall(r'^\s*"([a-z-]+)":', table, re.M))
    assert in_go == {n for n in ALL if components.module(n).HOST}
    for n in ALL:  # a host is a component that runs a process of its own, elected or not
        host = components.module(n).HOST
        assert host is None or (host in ALL and components.module(host).HOST is None)
        elected = getattr(components.module(n), "HOST_ELECTED", None)
        assert elected is None or (elected in ALL and components.module(elected).HOST_ELECTED is None)


def test_every_port_preflight_checks_comes_from_a_component_module(tmp_path) -> None:
    from k4s.cluster import preflight

    n = node(tmp_path)
    checked = {(name, port) for name, _, port in preflight.ports(n, ALL)}
    declared = {(name, port) for name in ALL for _, port in components.module(name).ports(n.cfg)}
    assert checked == declared
    assert ("kube-apiserver", n.cfg.apiserver_port) in checked and ("etcd", 2379) in checked
    # and what the components' flags say they listen on is what they declare
    for name in ALL:
        argv = " ".join(components.argv(name, n))
        for _, port in components.module(name).ports(n.cfg):
            assert str(port) in argv or name in ("kubelet", "kube-proxy"), (name, port)


def test_component_flags_name_only_files_the_pki_makes(tmp_path) -> None:
    from k4s.cluster import certs

    n = node(tmp_path)
    ident = certs.Identity("n1", "10.0.2.15", "10.43.0.1", "cluster.local")
    made = {n.certs.crt(x) for x in [*certs.CAS, *(leaf.name for leaf in certs.leaves(ident))]}
    made |= {n.certs.key(x) for x in [*certs.CAS, *(leaf.name for leaf in certs.leaves(ident))]}
    made |= {n.certs.sa_key, n.certs.sa_pub, n.certs.encryption_config, n.certs.crt(certs.CLIENT_CA_BUNDLE)}
    made |= {n.certs.kubeconfig(leaf.kubeconfig) for leaf in certs.leaves(ident) if leaf.kubeconfig}
    named = set()
    for name in ALL:
        for arg in components.argv(name, n):
            value = arg.split("=", 1)[-1]
            if value.startswith(str(n.paths.pki)) or value.startswith(str(n.paths.kubeconfigs)):
                named.add(Path(value))
    assert named and named <= made, named - made


def test_containerd_toml_values_cannot_add_keys(tmp_path) -> None:
    """Config validation refuses such a path; the TOML writer escapes it anyway (two fences)."""
    import dataclasses
    import tomllib

    from k4s.cluster.components import containerd
    from k4s.layout import Paths

    n = node(tmp_path)
    evil = dataclasses.replace(n, paths=Paths(Path('/x"\nimports = ["/etc/evil.toml"]\n#'), n.paths.run))
    doc = tomllib.loads(containerd.config_toml(evil))
    assert "imports" not in doc and doc["root"].startswith('/x"\nimports')
    assert set(doc) == set(tomllib.loads(containerd.config_toml(n)))


def test_the_pod_network_comes_from_flannels_lease(tmp_path) -> None:
    import json

    from k4s.cluster.components import flannel

    n = node(tmp_path)
    env = flannel.subnet_env(n)
    env.parent.mkdir(parents=True)
    env.write_text("FLANNEL_NETWORK=10.42.0.0/16\nFLANNEL_SUBNET=10.42.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n")
    assert flannel.write_cni_conf(n) == "10.42.3.1/24"
    conf = json.loads((n.cni_conf_dir / flannel.CNI_CONF).read_text())
    bridge = conf["plugins"][0]
    assert bridge["ipam"]["ranges"] == [[{"subnet": "10.42.3.0/24"}]]
    assert bridge["mtu"] == 1450 and bridge["ipMasq"] is False  # flanneld masquerades
    env.write_text("FLANNEL_NETWORK=10.42.0.0/16\n")
    with pytest.raises(K4sError, match="has no FLANNEL_SUBNET"):
        flannel.write_cni_conf(n)


def test_the_kubelet_caps_the_pods_cgroup_at_the_rest_of_the_machine(tmp_path) -> None:
    """kubepods gets memory.max = RAM - kubeReserved (k4s.cluster.protect)."""
    from k4s.cluster import protect
    from k4s.cluster.components import kubelet
    from k4s.cluster.memory import meminfo

    conf = kubelet.kubelet_config(node(tmp_path))
    total = meminfo()["MemTotal"] >> 10
    assert conf["kubeReserved"] == {"memory": f"{protect.reserved_mib('server', total)}Mi"}
    assert conf["enforceNodeAllocatable"] == ["pods"]


def test_pivot_root_is_used_unless_the_root_is_the_namespace_s_own(tmp_path) -> None:
    """The initramfs as / (its own parent in mountinfo): runc must chroot. The RAM root bound
    over it (stage 0), or any host's root: pivot_root."""
    from k4s.cluster.components.containerd import root_has_no_parent

    cases = {
        "initramfs": ("1 1 0:2 / / rw - rootfs rootfs rw\n", True),
        "bound over it": ("1 1 0:2 / / rw - rootfs rootfs rw\n31 1 0:2 / / rw - rootfs rootfs rw\n"
                          "32 31 0:5 / /proc rw - proc proc rw\n", False),
        "a host": ("27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n", False),
    }
    for name, (text, expected) in cases.items():
        (tmp_path / name).write_text(text)
        assert root_has_no_parent(str(tmp_path / name)) is expected, name
    assert root_has_no_parent(str(tmp_path / "missing")) is False


def test_an_etcd_only_server_runs_etcd_alone_in_a_process_of_its_own(tmp_path) -> None:
    from k4s.cluster import server

    n = node(tmp_path, **JOINS, **{"etcd-only": "1"})
    assert server.selected(False, n.cfg) == ["etcd"]
    assert hosts(n, ["etcd"]) == {}


@pytest.mark.parametrize("more, clock", [({}, (100, 1000)), ({"cluster-init": "1"}, (300, 3000)), (JOINS, (300, 3000))],
                         ids=["alone", "first", "joining"])
def test_etcd_s_raft_clock_is_etcd_s_own_for_a_member_alone_and_slower_for_a_control_plane(tmp_path, more, clock) -> None:
    """A lone member's first election waits 1-10 ticks: etcd's defaults make that short; members
    that heartbeat to each other under TCG need the slower clock."""
    from k4s.cluster.components import etcd

    argv = etcd.command(node(tmp_path, **more))
    assert [a for a in argv if a.startswith(("--heartbeat-interval=", "--election-timeout="))] == \
        [f"--heartbeat-interval={clock[0]}", f"--election-timeout={clock[1]}"]
