"""The supervisor with real child processes: services that share one process."""

from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from k4s.cluster import supervisor
from k4s.cluster.supervisor import Service, Supervisor

# A host process that makes its members ready one after the other, as the
# apiserver's process does for the controller-manager and the scheduler.
HOST = """
import pathlib, sys, time
d = pathlib.Path(sys.argv[1])
for name in sys.argv[2:]:
    time.sleep(0.2)
    (d / f"{name}.{__import__('os').getpid()}").touch()
time.sleep(600)
"""


def ready_file(d: Path, name: str, sup_box: list[Supervisor]) -> Callable[[], bool]:
    """Ready when the current host process has written name.<its pid>."""
    return lambda: (d / f"{name}.{sup_box[0].services[name].pid}").exists()


def group(tmp_path: Path) -> tuple[Supervisor, list[Supervisor]]:
    box: list[Supervisor] = []
    argv = [sys.executable, "-c", HOST, str(tmp_path), "host", "m1", "m2"]
    svcs = [
        Service("host", argv=lambda: argv, probe=ready_file(tmp_path, "host", box)),
        Service("m1", host="host", probe=ready_file(tmp_path, "m1", box)),
        Service("m2", host="host", probe=ready_file(tmp_path, "m2", box)),
        Service("after-m2", after=("m2",), task=lambda _sup: None),
    ]
    sup = Supervisor(svcs, tmp_path / "log", tmp_path / "status.json")
    box.append(sup)
    return sup, box


def step_until(sup: Supervisor, cond: Callable[[], bool], timeout: float = 20) -> None:
    end = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < end, {n: s.state for n, s in sup.services.items()}
        sup.step()
        time.sleep(0.05)


def test_members_start_stop_and_report_with_their_host(tmp_path, capsys) -> None:
    sup, _ = group(tmp_path)
    try:
        step_until(sup, sup.all_ready)
        host, m1, m2 = (sup.services[n] for n in ("host", "m1", "m2"))
        assert host.pid and m1.pid == host.pid and m2.pid == host.pid
        # one process, and the members' output goes to the host's log
        assert sup.log_path(m1) == sup.log_path(host) == tmp_path / "log" / "host.log"
        pid = host.pid
    finally:
        sup.stop_all(deadline=10)
    assert {s.state for s in sup.services.values()} == {"stopped"}
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # stopped and reaped
    err = capsys.readouterr().err
    for name in ("host", "m1", "m2"):
        assert f"component={name} event=stopped" in err


def test_a_crashed_host_restarts_with_its_members(tmp_path) -> None:
    sup, _ = group(tmp_path)
    try:
        step_until(sup, sup.all_ready)
        first = sup.services["host"].pid
        assert first
        os.kill(first, signal.SIGKILL)
        step_until(sup, lambda: sup.services["m2"].state != "ready")
        assert sup.services["m1"].state == "waiting" and sup.services["m1"].pid is None
        step_until(sup, sup.all_ready)
        host, m1, m2 = (sup.services[n] for n in ("host", "m1", "m2"))
        assert host.pid != first and m1.pid == m2.pid == host.pid
        assert host.restarts == m1.restarts == m2.restarts == 1
    finally:
        sup.stop_all(deadline=10)


def test_a_member_needs_a_process_to_live_in(tmp_path) -> None:
    with pytest.raises(ValueError, match="hosted by 'task'"):
        Supervisor([Service("task", task=lambda _sup: None), Service("m", host="task")], tmp_path)


@pytest.mark.parametrize("text, shown", [
    ("I0101 starting\npanic: failed to open database\n\ngoroutine 1 [running]:\nmain.main()\n\tmain.go:10 +0x1d\n",
     "panic: failed to open database"),
    ("one\ntwo\nthree\nfour\n", "two | three | four"),
])
def test_the_error_shows_a_go_panic_rather_than_its_stack(tmp_path, text, shown) -> None:
    from k4s import log

    (tmp_path / "c.log").write_text(text)
    assert log.tail(tmp_path / "c.log") == shown


def test_pods_stop_before_the_services(tmp_path) -> None:
    """kill_descendants(spare_services=True): the stray processes (container shims and containers
    re-parented to k4s) get TERM; the services and their children live on."""
    import subprocess

    sup, _ = group(tmp_path)
    try:
        step_until(sup, sup.all_ready)
        stray = subprocess.Popen(["sleep", "600"])
        assert sup.kill_descendants(grace=5, spare_services=True) == 1
        with pytest.raises(ProcessLookupError):
            os.kill(stray.pid, 0)
        os.kill(sup.services["host"].pid, 0)  # still running
        assert sup.services["host"].state == "ready"
    finally:
        sup.stop_all(deadline=10)


def test_a_restart_says_why_in_one_line(tmp_path, capsys) -> None:
    crash = [sys.executable, "-c", "import sys; print('I0101 starting'); print('panic: boom', file=sys.stderr); sys.exit(2)"]
    sup = Supervisor([Service("crash", argv=lambda: crash, probe=lambda: False)], tmp_path / "log", tmp_path / "s.json")
    try:
        step_until(sup, lambda: sup.services["crash"].state == "backoff")
    finally:
        sup.stop_all(deadline=10)
    assert 'component=crash event=exited exit="code 2" restart_in=1.00s last="panic: boom"' in capsys.readouterr().err


def test_a_post_stop_hook_runs_once_its_process_has_ended_and_a_failing_one_stops_nothing(tmp_path) -> None:
    """What a worker's kubelet does at power-off: once the process has ended (never before, or
    the kubelet would report Ready again), the Node says it is shutting down."""
    sup, _ = group(tmp_path)
    seen: list[tuple[int, bool]] = []

    def hook(s: Supervisor) -> None:
        pid = pids[0]
        try:
            os.kill(pid, 0)
            alive = True
        except ProcessLookupError:
            alive = False
        seen.append((pid, alive))
        raise OSError("the apiserver is gone")

    sup.services["host"].post_stop = hook
    try:
        step_until(sup, sup.all_ready)
        pids = [sup.services["host"].pid]
    finally:
        sup.stop_all(deadline=10)
    assert seen == [(pids[0], False)]
    assert {s.state for s in sup.services.values()} == {"stopped"}


def test_a_bring_up_deadline_waits_while_what_it_waits_for_is_down(tmp_path, monkeypatch) -> None:
    """etcd without a majority takes the apiserver's readiness: a component still coming up
    above it keeps its deadline until the apiserver is back, then the deadline runs again."""
    monkeypatch.setattr(supervisor, "RECHECK_EVERY", 0.1)
    up = {"dep": True}
    sleeper = [sys.executable, "-c", "import time; time.sleep(600)"]
    sup = Supervisor([Service("dep", argv=lambda: sleeper, probe=lambda: up["dep"]),
                      Service("top", after=("dep",), argv=lambda: sleeper, probe=lambda: False, ready_timeout=1.0)],
                     tmp_path / "log", tmp_path / "status.json")
    top = sup.services["top"]
    try:
        step_until(sup, lambda: top.state == "starting")
        started = top.first_started
        up["dep"] = False
        step_until(sup, lambda: sup.services["dep"].state == "starting")
        end = time.monotonic() + 2.5  # over twice its deadline, what it waits for down
        while time.monotonic() < end:
            sup.step()
            time.sleep(0.05)
        assert top.state == "starting" and sup.fatal is None
        assert top.first_started == started and top.paused >= 2.0  # the timeline keeps when it started
        up["dep"] = True
        step_until(sup, lambda: sup.fatal is not None, timeout=10)
        assert "top did not become ready within 1s" in str(sup.fatal)
    finally:
        sup.stop_all(deadline=10)
