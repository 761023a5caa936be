"""Network boot: PXE through the NIC's iPXE ROM, and signed payloads."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from k4s import events
from k4s.host import netboot
from k4s.host.vm import CMDLINE, VM
from tests.conftest import OUT, require
from tests.e2e.conftest import KEYS, MIN_SERIAL, STAGE1, boot_side_by_side, make_vm

HTTP_PORT = 18080


def test_pxe_boot_through_ipxe_loads_every_initrd_and_starts_the_node(tmp_path) -> None:
    """No -kernel: SeaBIOS runs the virtio NIC's iPXE ROM, QEMU's DHCP+TFTP hand it boot.ipxe,
    which loads the kernel, the initramfs and the seed over HTTP from `netboot serve`. The boot
    stops once the node has its cluster CA (k4s init ran, the node started): from there on it is
    the direct boot the appliance tests take to Ready."""
    vm = make_vm(tmp_path / "vm")
    vm.out.mkdir(parents=True)
    seed = tmp_path / "seed.cpio.zst"
    seed.write_bytes(vm.seed())
    payload = tmp_path / "netboot"
    netboot.prepare(payload, vm.kernel, [vm.initrd, seed], CMDLINE,
                    f"http://${{next-server}}:{HTTP_PORT}/")
    serve = subprocess.Popen([sys.executable, "-m", "k4s", "netboot", "serve", "--dir", str(payload),
                              "--port", str(HTTP_PORT)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    vm.pxe = payload
    try:
        with vm.booted(until=events.CA, timeout=600) as b:
            served = (tmp_path / "serve.log").read_text()
            for name in ("/vmlinuz", "/initramfs.cpio.zst", "/seed.cpio.zst"):
                assert f"path={name} status=200" in served, served
            assert events.INIT_START.first(b.events()) and b.reached["hash"] == vm.ca_hash
    finally:
        serve.terminate()
        serve.wait(10)


# --- LinuxBoot: stage 1 (standing for the flash part) fetches, verifies and kexecs stage 2 -------------
# Over HTTPS to a Ready node: the fleet's rejoin (tests/e2e/test_fleet.py). Here: what it refuses.


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


def flip_a_byte(payload: Path) -> None:
    f = payload / "initramfs.cpio.zst"
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x40
    f.unlink()  # a hard link into out/: replace, never write through it
    f.write_bytes(bytes(data))


def test_tampered_stage2_is_refused_and_nothing_runs(tmp_path, https_stage1) -> None:
    """One flipped byte in the initramfs (over HTTP), and over HTTPS a manifest whose serial is
    below the minimum built into stage 1 (an older payload replayed): each time one console line
    naming the artifact and the reason, no kexec, the VM powers off. A manifest signed by another
    key and a server whose certificate is not from stage 1's CA take the same path to the console;
    they are refused in tests/unit (test_manifest, test_stage1). The two machines boot side by side."""
    initrd, https_pair = https_stage1
    cases = [(flip_a_byte, "initramfs.cpio.zst: sha256 differs from the signed manifest", None, None),
             (lambda p: None, f"serial {MIN_SERIAL - 1} is below this stage 1's minimum {MIN_SERIAL}",
              https_pair, MIN_SERIAL - 1)]
    servers = []
    try:
        vms = []
        for i, (tamper, _, tls, serial) in enumerate(cases):
            payload = signed_payload(tmp_path / f"case{i}", KEYS / "signing.key", serial)
            tamper(payload)
            servers.append(srv := netboot.serve_in_thread(payload, tls=tls))
            vms.append(stage1_vm(tmp_path / f"case{i}", srv.server_address[1], "https" if tls else "http",
                                 initrd if tls else STAGE1))
        ended = boot_side_by_side(vms)
    finally:
        for srv in servers:
            srv.shutdown()
    for (rc, console), (_, message, _, _) in zip(ended, cases, strict=True):
        errors = [ln for ln in console.splitlines() if ln.startswith("k4s stage1: error:")]
        assert len(errors) == 1 and message in errors[0] and "(hint: " in errors[0], console[-2000:]
        assert "(kexec)" not in console and "k4s init: starting" not in console and "component=etcd" not in console
        assert rc == 0 and "k4s: poweroff" in console and "Kernel panic" not in console
