"""Network boot: PXE through the NIC's iPXE ROM, and signed payloads."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from k4s.host import netboot
from k4s.host.vm import CMDLINE, VM
from tests.conftest import OUT, require
from tests.e2e.conftest import assert_node_ready, boot, make_vm

HTTP_PORT = 18080


def test_pxe_boot_through_ipxe_to_a_ready_node(tmp_path) -> None:
    """No -kernel: SeaBIOS runs the virtio NIC's iPXE ROM, QEMU's DHCP+TFTP hand it boot.ipxe,
    which loads the kernel, the initramfs and the seed over HTTP from `netboot serve`."""
    vm = make_vm(tmp_path / "vm")
    vm.out.mkdir(parents=True)
    seed = tmp_path / "seed.cpio.zst"
    seed.write_bytes(vm.seed())
    payload = tmp_path / "netboot"
    netboot.prepare(payload, vm.kernel, [vm.initrd, seed], CMDLINE,
                    f"http://${{next-server}}:{HTTP_PORT}/")
    serve = subprocess.Popen([*k4s_cmd_argv(), "netboot", "serve", "--dir", str(payload), "--port", str(HTTP_PORT)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    vm.pxe = payload
    t0 = time.monotonic()
    proc = None
    try:
        proc = boot(vm, timeout=600)
        vm.write_kubeconfig()
        assert_node_ready(vm)
        served = (tmp_path / "serve.log").read_text()
        for name in ("/vmlinuz", "/initramfs.cpio.zst", "/seed.cpio.zst"):
            assert f"path={name} status=200" in served, served
        assert time.monotonic() - t0 < 600
    finally:
        vm.power_off(120)
        if proc is not None and proc.poll() is None:
            proc.kill()
        serve.terminate()
        serve.wait(10)


def k4s_cmd_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "k4s"]


# --- LinuxBoot: stage 1 (standing for the flash part) fetches, verifies and kexecs stage 2 -------------

from tests.e2e.conftest import KEYS, STAGE1, build_https_stage1  # noqa: E402


def signed_payload(tmp: Path, key: Path, serial: int | None = None) -> Path:
    """Stage 2 as `k4s netboot prepare` lays it out: kernel, initramfs, seed, signed."""
    require(STAGE1.exists() and (KEYS / "signing.key").exists(), "stage 1 and its key", "make stage1")
    vm = make_vm(tmp / "stage2")
    vm.out.mkdir(parents=True)
    seed = tmp / "seed.cpio.zst"
    seed.write_bytes(vm.seed())
    payload = tmp / "payload"
    netboot.prepare(payload, vm.kernel, [vm.initrd, seed],
                    CMDLINE, key=key,
                    parts=netboot.parts_from_report(OUT / "image-report.json"), serial=serial)
    return payload


def stage1_vm(tmp: Path, port: int, scheme: str = "http", initrd: Path = STAGE1) -> VM:
    vm = make_vm(tmp / "stage1", append=f"k4s.payload={scheme}://10.0.2.2:{port}/")  # the host, from the guest
    vm.initrd, vm.seeded, vm.operator_dir = initrd, False, tmp / "stage2" / "operator"
    return vm


MIN_SERIAL = 100  # the https stage 1 refuses manifests signed with a lower serial (a revoked, older payload)


@pytest.fixture(scope="module")
def https_stage1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    """Stage 1 built with a payload CA and a minimum serial, and a server certificate from that
    CA for 10.0.2.2: built once for the module."""
    return build_https_stage1(tmp_path_factory.mktemp("https-stage1"), MIN_SERIAL)


def test_linuxboot_stage1_verifies_and_kexecs_stage2_to_a_ready_node(tmp_path, https_stage1) -> None:
    """Over HTTPS: stage 1 checks the payload server against the CA built into it, then the
    signed manifest and every artifact (over plain HTTP the tamper test below covers the path)."""
    payload = signed_payload(tmp_path, KEYS / "signing.key")
    initrd, tls = https_stage1
    srv = netboot.serve_in_thread(payload, tls=tls)
    vm = stage1_vm(tmp_path, srv.server_address[1], "https", initrd)
    proc = None
    try:
        proc = boot(vm, timeout=600)
        vm.write_kubeconfig()
        assert_node_ready(vm)
        console = vm.console.read_text(errors="replace")
        for name in ("vmlinuz", "initramfs.cpio.zst", "seed.cpio.zst"):
            assert f"component=stage1 event=verified file={name}" in console
        assert console.index("(kexec)") < console.index("k4s init: starting")
        # stage 0 checked every squashfs part against the signed list stage 1 handed on
        assert "k4s stage 0: 4 parts match the signed manifest" in console
    finally:
        vm.power_off(120)
        if proc is not None and proc.poll() is None:
            proc.kill()
        srv.shutdown()


def boot_until_exit(vm: VM, timeout: float = 300) -> str:
    proc = vm.start()
    try:
        assert proc.wait(timeout=timeout) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    return vm.console.read_text(errors="replace")


def flip_a_byte(payload: Path) -> None:
    f = payload / "initramfs.cpio.zst"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x40
    f.unlink()  # a hard link into out/: replace, never write through it
    f.write_bytes(bytes(data))


def test_tampered_stage2_is_refused_and_nothing_runs(tmp_path, https_stage1) -> None:
    """One flipped byte in the initramfs, a manifest signed by another key, an https server whose
    certificate is not from the CA stage 1 holds, a manifest whose serial is below stage 1's
    minimum (an older payload replayed): each time one console line naming the artifact and the
    reason, no kexec, the VM powers off."""
    from k4s.image import manifest
    from tests.unit.test_stage1 import tls_pair

    other = tmp_path / "other-key"
    manifest.keygen(other)
    initrd, https_pair = https_stage1
    _, *impostor = tls_pair(tmp_path, "impostor", ip="10.0.2.2")
    cases = [(KEYS / "signing.key", flip_a_byte, "initramfs.cpio.zst: sha256 differs from the signed manifest", None,
              None),
             (other / "signing.key", lambda p: None,
              "manifest.json: the signature does not verify with the built-in public key", None, None),
             (KEYS / "signing.key", lambda p: None, "its certificate does not verify with the built-in CA bundle",
              tuple(impostor), None),
             (KEYS / "signing.key", lambda p: None,
              f"serial {MIN_SERIAL - 1} is below this stage 1's minimum {MIN_SERIAL}", "https", MIN_SERIAL - 1)]
    for i, (key, tamper, message, tls, serial) in enumerate(cases):
        if tls == "https":
            tls = https_pair
        payload = signed_payload(tmp_path / f"case{i}", key, serial)
        tamper(payload)
        srv = netboot.serve_in_thread(payload, tls=tls)
        try:
            vm = stage1_vm(tmp_path / f"case{i}", srv.server_address[1], "https" if tls else "http",
                           initrd if tls else STAGE1)
            console = boot_until_exit(vm)
        finally:
            srv.shutdown()
        errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage1: error:")]
        assert len(errors) == 1 and message in errors[0] and "(hint: " in errors[0], console[-2000:]
        assert "(kexec)" not in console and "k4s init: starting" not in console and "component=etcd" not in console
        assert "k4s: poweroff" in console and "Kernel panic" not in console
