"""Which components share a process, and the command line of a shared one."""

from __future__ import annotations

from pathlib import Path

import pytest

from k4s import components, config
from k4s.components import Node
from k4s.paths import Paths

ALL = list(components.ORDER)


def node(tmp_path: Path, processes: str = "shared", separate_binaries: bool = False) -> Node:
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
        "component-processes": processes, "node-name": "n1"})
    return Node(cfg, Paths.of(cfg.data_dir, cfg.run_dir), "10.0.2.15", "eth0", bin_dir)


def hosts(n: Node, names: list[str]) -> dict[str, str]:
    return {name: h for name in names if (h := components.host_of(name, n, names))}


def test_multicall_shares_control_plane_and_node_processes(tmp_path) -> None:
    assert hosts(node(tmp_path), ALL) == {
        "etcd": "kube-apiserver", "kube-controller-manager": "kube-apiserver", "kube-scheduler": "kube-apiserver", "kube-proxy": "kubelet"}


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
