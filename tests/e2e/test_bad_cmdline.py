"""A bad kernel command line: the error on the console, then a clean poweroff, never a panic."""

from __future__ import annotations

import pytest

from k4s.host.vm import VM
from tests.e2e.conftest import make_vm


def boot_until_exit(vm: VM) -> tuple[int, str]:
    """Boot and wait for QEMU to exit by itself (-no-reboot: a poweroff ends it); (rc, console)."""
    proc = vm.start()
    try:
        rc = proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    return rc, vm.console.read_text(errors="replace")


@pytest.mark.parametrize("append,expected", [
    ("k4s.bogus=1", "kernel command line: unknown key 'bogus'"),
    ("k4s.ip=10.0.2.300/24", "kernel command line: key 'ip': '10.0.2.300/24' is neither 'dhcp' nor"),
])
def test_bad_cmdline_prints_error_and_powers_off(tmp_path, append, expected) -> None:
    vm = make_vm(tmp_path, append=append)
    rc, console = boot_until_exit(vm)
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s init: error:")]
    assert len(errors) == 1 and expected in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console


@pytest.mark.parametrize("append,ending", [("", "reboot: Power down"),
                                           ("k4s.on-failure=reboot", "reboot: Restarting system")])
def test_broken_bundle_stops_in_stage0(tmp_path, append, ending) -> None:
    """A k4s bundle the kernel cannot mount (here: a later initramfs segment overwrites
    it with garbage) ends in stage 0's one-line error and k4s.on-failure, not a panic."""
    from k4s.image import cpio
    from tests.e2e.conftest import OUT

    garbage = cpio.Entry("usr/lib/k4s/parts/k4s.squashfs", 0o100444, data=b"not a squashfs\n" * 4096)
    broken = tmp_path / "broken.cpio"
    broken.write_bytes((OUT / "initramfs.cpio.zst").read_bytes() + cpio.bytes_of([garbage]))
    vm = make_vm(tmp_path / "vm", append=append)
    vm.initrd = broken
    rc, console = boot_until_exit(vm)
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage 0: error:")]
    assert len(errors) == 1 and "k4s.squashfs" in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert ending in console and "Kernel panic" not in console


def test_a_part_that_differs_from_the_signed_list_is_not_mounted(tmp_path) -> None:
    """What stage 1 hands on: the signed sha256 of each squashfs part. A part swapped after
    stage 1 (here: a list that does not match, as the last segment) stops stage 0 before it
    mounts anything: one line naming the part, then a poweroff."""
    from k4s.image import cpio
    from tests.e2e.conftest import OUT

    wrong = f"{'0' * 64}  usr/lib/k4s/parts/kubernetes.squashfs\n".encode()
    handoff = cpio.Entry("etc/k4s/parts.sha256", 0o100444, data=wrong)
    initrd = tmp_path / "altered.cpio"
    initrd.write_bytes((OUT / "initramfs.cpio.zst").read_bytes() + cpio.bytes_of([handoff]))
    vm = make_vm(tmp_path / "vm")
    vm.initrd = initrd
    rc, console = boot_until_exit(vm)
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage 0: error:")]
    assert len(errors) == 1 and "kubernetes.squashfs: FAILED" in errors[0], console[-2000:]
    assert "differs from the signed manifest" in errors[0] and "(hint: " in errors[0]
    assert "k4s init: starting" not in console and "Kernel panic" not in console
