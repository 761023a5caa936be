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
