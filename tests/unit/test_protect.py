"""The node's own processes behind both fences: oom_score_adj below every pod's, and memory.min.
(The kernel's side, that the OOM killer then spares them, is the appliance e2e test's.)"""

from __future__ import annotations

from pathlib import Path

from k4s.cluster import protect


def test_memory_min_is_the_measured_use_capped_by_the_machine() -> None:
    assert protect.memory_min_mib("server", 1460) == 256
    assert protect.memory_min_mib("agent", 1460) == 96
    assert protect.memory_min_mib("server", 460) == 184  # a 512 MiB VM keeps room for pods


def fake_proc(tmp: Path, pid: int) -> Path:
    (tmp / "proc" / str(pid)).mkdir(parents=True)
    (tmp / "proc" / str(pid) / "oom_score_adj").write_text("0")
    return tmp / "proc"


def test_a_component_gets_both_fences(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.subtree_control").write_text("cpu memory pids\n")
    p = protect.Protector("server", root, fake_proc(tmp_path, 42))
    assert p.cgroup == root / "k4s" and int((root / "k4s" / "memory.min").read_text()) == p.min_mib << 20
    p.adopt(42)
    assert (tmp_path / "proc" / "42" / "oom_score_adj").read_text() == "-999"
    assert (root / "k4s" / "cgroup.procs").read_text() == "42"


def test_without_a_memory_controller_only_the_score_is_set(tmp_path: Path) -> None:
    root = tmp_path / "v1"
    root.mkdir()  # no cgroup.subtree_control: a cgroup v1 host
    p = protect.Protector("agent", root, fake_proc(tmp_path, 7))
    assert p.cgroup is None
    p.adopt(7)
    assert (tmp_path / "proc" / "7" / "oom_score_adj").read_text() == "-999"
    p.adopt(8)  # gone already: nothing to do, nothing raised
