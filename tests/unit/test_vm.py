"""The QEMU harness: what it makes of the guest's console."""

import pytest

from k4s.host import vm

LOCKED = """[   36.25] component=node-ready event=start after=23.49s
[   60.532233] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [k4s:106]
[   60.532300] Modules linked in: xt_nat nf_tables
[   60.532310] RIP: 0010:smp_call_function_many_cond+0x11c/0x3e0
[   60.532311] Code: 00 89 5c 24 14 48 89 6c 24 08
[   60.532312] RSP: 0018:ffffaf6cc027fa98 EFLAGS: 00000246
[   60.532320] Call Trace:
[   60.532321]  <TASK>
[   60.532322]  ? flush_tlb_func+0x10/0x10
[   60.532323]  on_each_cpu_cond_mask+0x20/0x30
[   60.532324]  nft_do_chain+0x1a/0x40 [nf_tables]
[   60.532325]  do_syscall_64+0x5f/0x90
[   60.532326] RIP: 0033:0x7f8020f0fe94
"""


def test_a_guest_lockup_is_reported_with_the_functions_on_its_stacks():
    report = vm.lockup_report(LOCKED)
    assert report == ("watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [k4s:106]; stacks: "
                      "smp_call_function_many_cond < on_each_cpu_cond_mask < nft_do_chain < do_syscall_64")
    assert vm.lockup_report(LOCKED.splitlines()[0]) is None


def test_waiting_for_ready_stops_at_a_guest_lockup(tmp_path, monkeypatch):
    monkeypatch.setattr(vm, "LOCKUP_TRACE_WAIT", 0)
    m = vm.VM(tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd")
    m.console.write_text(LOCKED)
    m.events.write_text("")
    with pytest.raises(vm.GuestLockup, match="locked up: watchdog: BUG: soft lockup .* smp_call_function_many_cond"):
        m.wait(None, timeout=600)


def test_a_process_whose_main_thread_exited_is_alive_until_its_last_thread_is_gone():
    """A QEMU killed -9 frees its forwarded ports only when its last thread exits, which
    can be after its main thread is already a zombie."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    child = subprocess.Popen([sys.executable, "-c", (
        "import ctypes, threading, time\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "print('ready', flush=True)\n"
        "ctypes.CDLL(None).syscall(60, 0)\n")], stdout=subprocess.PIPE, text=True)  # exit(2): this thread only
    try:
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        end = time.monotonic() + 10
        while vm.state(Path(f"/proc/{child.pid}/stat")) != "Z":
            assert time.monotonic() < end, "the main thread did not exit"
            time.sleep(0.05)
        assert vm.alive(child.pid)
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        assert not vm.alive(child.pid)
    finally:
        child.kill()
        child.wait()


class FakeQemu:
    """VM.start without QEMU: each start writes one scripted console and event stream, and
    returns a process that exits with `rc` after `lives` seconds."""

    def __init__(self, boots: list[tuple[str, list[dict], float, int]]) -> None:
        self.boots, self.started = boots, 0

    def __call__(self, m: "vm.VM"):  # type: ignore[no-untyped-def]
        import json
        import subprocess
        import sys

        console, evs, lives, rc = self.boots[self.started]
        self.started += 1
        m.out.mkdir(parents=True, exist_ok=True)
        m.console.write_text(console)
        m.events.write_text("".join(json.dumps(e) + "\n" for e in evs))
        return subprocess.Popen([sys.executable, "-c", f"import time, sys; time.sleep({lives}); sys.exit({rc})"])


def fake(monkeypatch, tmp_path, *boots):  # type: ignore[no-untyped-def]
    q = FakeQemu(list(boots))
    monkeypatch.setattr(vm.VM, "start", lambda self: q(self))
    monkeypatch.setattr(vm, "LOCKUP_TRACE_WAIT", 0)
    return vm.VM(tmp_path, tmp_path / "vmlinuz", tmp_path / "initrd"), q


READY = [{"component": "pki", "event": "ca", "hash": "sha256:ab"}, {"component": "init", "event": "start"},
         {"component": "node", "event": "ready", "node": "k4s-1"}]


def test_a_boot_stops_at_the_event_it_waits_for(monkeypatch, tmp_path):
    from k4s import events

    m, _ = fake(monkeypatch, tmp_path, ("", READY[:2], 30, 0), ("", READY, 30, 0))
    with m.booted(until=events.INIT_START) as b:
        assert b.reached == {"component": "init", "event": "start"} and b.proc.poll() is None
    assert b.proc.poll() is not None  # stopped on the way out
    with m.booted() as b:
        assert b.node == "k4s-1" and m.ca_hash == "sha256:ab"


def test_a_lockup_boots_once_more_and_a_second_one_fails(monkeypatch, tmp_path):
    m, q = fake(monkeypatch, tmp_path, (LOCKED, [], 30, 0), ("", READY, 30, 0))
    with pytest.warns(vm.LockupWarning, match="soft lockup"):
        b = m.boot()
    m.stop(b.proc)
    assert q.started == 2 and b.node == "k4s-1"
    assert "soft lockup" in (tmp_path / "console-lockup.log").read_text()
    m, q = fake(monkeypatch, tmp_path, (LOCKED, [], 30, 0), (LOCKED, [], 30, 0))
    with pytest.warns(vm.LockupWarning), pytest.raises(vm.GuestLockup):
        m.boot()
    assert q.started == 2


def test_a_fatal_event_or_an_early_exit_fails_the_boot_and_exit_is_waited_for(monkeypatch, tmp_path):
    from k4s.errors import K4sError

    fatal = [{"component": "init", "event": "fatal", "error": "bad key", "hint": "fix it"}]
    m, _ = fake(monkeypatch, tmp_path, ("", fatal, 30, 0), ("", [], 0, 3), ("", fatal, 0, 0))
    with pytest.raises(K4sError, match="the appliance failed: bad key \\(hint: fix it\\)"):
        m.boot()
    with pytest.raises(K4sError, match=r"QEMU exited \(3\) before node ready"):
        m.boot()
    with m.booted(until=vm.EXIT, timeout=30) as b:  # a fatal error is what it waits to see end
        assert b.reached == {"rc": 0} and b.events()[0]["error"] == "bad key"
