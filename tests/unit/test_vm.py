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
        m.wait_ready(None, timeout=600, echo=False)


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
