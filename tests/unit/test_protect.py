"""The node's own processes below every pod in the OOM killer's order.
(The kernel's side, that it then spares them, is the appliance e2e test's.)"""

from __future__ import annotations

from pathlib import Path

from k4s.cluster import protect


def fake_proc(tmp: Path, pid: int) -> Path:
    (tmp / "proc" / str(pid)).mkdir(parents=True)
    (tmp / "proc" / str(pid) / "oom_score_adj").write_text("0")
    return tmp / "proc"


def test_a_component_gets_a_score_below_every_pod(tmp_path: Path) -> None:
    p = protect.Protector("server", fake_proc(tmp_path, 42))
    p.adopt(42)
    assert (tmp_path / "proc" / "42" / "oom_score_adj").read_text() == "-999"
    p.adopt(8)  # gone already: nothing to do, nothing raised


def fake_cgroup_root(tmp: Path, controllers: str) -> Path:
    root = tmp / "cgroup"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text(controllers + "\n")
    return root


def test_pid_1_enters_the_node_s_cgroup_with_memory_min_sized_for_its_role(tmp_path: Path) -> None:
    import os

    root = fake_cgroup_root(tmp_path, "cpuset cpu io memory pids")
    p = protect.Protector("server")
    assert p.enter_cgroup(1024, root) == 256
    assert (root / "k4s" / "memory.min").read_text() == str(256 << 20)
    assert (root / "k4s" / "cgroup.procs").read_text() == str(os.getpid())
    assert protect.memory_min_mib("server", 512) == 204  # at most 40% of a small machine
    assert protect.memory_min_mib("agent", 1024) == 96


def test_the_pods_get_the_rest_of_the_machine_and_some_of_a_small_one() -> None:
    assert protect.reserved_mib("server", 958) == 600  # a 1 GiB VM's MemTotal: pods 358 MiB
    assert protect.reserved_mib("agent", 958) == 320
    assert protect.reserved_mib("server", 478) == 478 - protect.PODS_MIN_MIB  # 512 MiB
    assert protect.reserved_mib("agent", 100) == 0


def test_without_the_memory_controller_only_the_score_fence_holds(tmp_path: Path) -> None:
    root = fake_cgroup_root(tmp_path, "cpu pids")
    assert protect.Protector("agent").enter_cgroup(1024, root) == 0
    assert not (root / "k4s").exists()
