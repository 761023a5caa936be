"""A bad kernel command line or a broken image: the error on the console, then k4s.on-failure
(a clean poweroff by default), never a panic. One boot per path: init's error (every bad key and
value is a unit test of k4s.config), stage 0's mount error ending in a reboot, and stage 0's parts
check ending in a poweroff."""

from __future__ import annotations

from tests.e2e.conftest import boot_until_exit, make_vm


def test_bad_cmdline_prints_error_and_powers_off(tmp_path) -> None:
    expected = "kernel command line: key 'ip': '10.0.2.300/24' is neither 'dhcp' nor"
    vm = make_vm(tmp_path, append="k4s.ip=10.0.2.300/24")
    rc, console = boot_until_exit(vm)
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s init: error:")]
    assert len(errors) == 1 and expected in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console


def test_broken_bundle_stops_in_stage0(tmp_path) -> None:
    """A k4s bundle the kernel cannot mount (here: a later initramfs segment overwrites
    it with garbage) ends in stage 0's one-line error and k4s.on-failure (here: reboot), not a panic."""
    from k4s.image import cpio
    from tests.e2e.conftest import OUT

    garbage = cpio.Entry("usr/lib/k4s/parts/k4s.squashfs", 0o100444, data=b"not a squashfs\n" * 4096)
    broken = tmp_path / "broken.cpio"
    broken.write_bytes((OUT / "initramfs.cpio.zst").read_bytes() + cpio.bytes_of([garbage]))
    vm = make_vm(tmp_path / "vm", append="k4s.on-failure=reboot")
    vm.initrd = broken
    rc, console = boot_until_exit(vm)
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage 0: error:")]
    assert len(errors) == 1 and "k4s.squashfs" in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "reboot: Restarting system" in console and "Kernel panic" not in console


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
    assert "reboot: Power down" in console  # k4s.on-failure's default
