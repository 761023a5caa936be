"""A bad kernel command line or a broken image: the error on the console, then k4s.on-failure
(a clean poweroff by default), never a panic. One boot per path, the three side by side: init's
error (every bad key and value is a unit test of k4s.config), stage 0's mount error ending in a
reboot, and stage 0's parts check ending in a poweroff."""

from __future__ import annotations

import pytest

from k4s.image import cpio
from tests.e2e.conftest import OUT, boot_side_by_side, make_vm

# a k4s bundle the kernel cannot mount: a later initramfs segment overwrites it with garbage
GARBAGE = cpio.Entry("usr/lib/k4s/parts/k4s.squashfs", 0o100444, data=b"not a squashfs\n" * 4096)
# what stage 1 hands on, the signed sha256 of each squashfs part, not matching a part
WRONG_LIST = cpio.Entry("etc/k4s/parts.sha256", 0o100444,
                        data=f"{'0' * 64}  usr/lib/k4s/parts/kubernetes.squashfs\n".encode())


@pytest.fixture(scope="module")
def ended(tmp_path_factory) -> dict[str, tuple[int, str]]:
    """Each path's (QEMU's status, console)."""
    tmp = tmp_path_factory.mktemp("bad")
    vms = {"cmdline": make_vm(tmp / "cmdline", append="k4s.ip=10.0.2.300/24"),
           "bundle": make_vm(tmp / "bundle", append="k4s.on-failure=reboot"),
           "parts": make_vm(tmp / "parts")}
    for name, entry in (("bundle", GARBAGE), ("parts", WRONG_LIST)):
        vms[name].initrd = tmp / f"{name}.cpio"
        vms[name].initrd.write_bytes((OUT / "initramfs.cpio.zst").read_bytes() + cpio.bytes_of([entry]))
    return dict(zip(vms, boot_side_by_side(list(vms.values())), strict=True))


def test_bad_cmdline_prints_error_and_powers_off(ended) -> None:
    expected = "kernel command line: key 'ip': '10.0.2.300/24' is neither 'dhcp' nor"
    rc, console = ended["cmdline"]
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s init: error:")]
    assert len(errors) == 1 and expected in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console


def test_broken_bundle_stops_in_stage0(ended) -> None:
    """A k4s bundle the kernel cannot mount ends in stage 0's one-line error and k4s.on-failure
    (here: reboot), not a panic."""
    rc, console = ended["bundle"]
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage 0: error:")]
    assert len(errors) == 1 and "k4s.squashfs" in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "reboot: Restarting system" in console and "Kernel panic" not in console


def test_a_part_that_differs_from_the_signed_list_is_not_mounted(ended) -> None:
    """A part swapped after stage 1 (here: a list that does not match, as the last segment) stops
    stage 0 before it mounts anything: one line naming the part, then a poweroff."""
    rc, console = ended["parts"]
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage 0: error:")]
    assert len(errors) == 1 and "kubernetes.squashfs: FAILED" in errors[0], console[-2000:]
    assert "differs from the signed manifest" in errors[0] and "(hint: " in errors[0]
    assert "k4s init: starting" not in console and "Kernel panic" not in console
    assert "reboot: Power down" in console  # k4s.on-failure's default
