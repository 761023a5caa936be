"""Network boot: PXE through the NIC's iPXE ROM, and signed payloads."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from k4s import events
from k4s.host import netboot
from k4s.host.vm import CMDLINE, ESP_SLOT, EXIT, VM, Console
from tests.conftest import OUT, require, tool
from tests.e2e.conftest import (
    KEYS,
    MIN_SERIAL,
    STAGE1,
    UEFI_VARS,
    boot_side_by_side,
    firmware_lines,
    make_vm,
)

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


def signed_payload(tmp: Path, key: Path, serial: int | None = None, secure_boot_keys: Path | None = None) -> Path:
    """Stage 2 as `k4s netboot prepare` lays it out: kernel, initramfs, seed, signed."""
    require(STAGE1.exists() and (KEYS / "signing.key").exists(), "stage 1 and its key", "make stage1")
    vm = make_vm(tmp / "stage2")
    vm.out.mkdir(parents=True)
    seed = tmp / "seed.cpio.zst"
    seed.write_bytes(vm.seed())
    payload = tmp / "payload"
    netboot.prepare(payload, vm.kernel, [vm.initrd, seed],
                    CMDLINE, key=key,
                    parts=netboot.parts_from_report(OUT / "image-report.json"), serial=serial,
                    secure_boot_keys=secure_boot_keys)
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


def secure_boot_images(tmp: Path, cmdline: str) -> tuple[Path, Path, Path, Path]:
    """Stage 1's UKI four ways, in the order the firmware finds them: unsigned, signed with
    another owner's db key, signed and then one byte flipped, and signed with the project's."""
    from k4s.host import secureboot
    from k4s.mkimage import uki

    require((KEYS / "db.key").exists() and UEFI_VARS.exists(), "the Secure Boot keys and store", "make stage1")
    signed = tmp / "signed.efi"
    uki.build(OUT / "vmlinuz", STAGE1, cmdline, signed, KEYS)
    unsigned = Path(shutil.copy(signed, tmp / "unsigned.efi"))
    subprocess.run([tool("sbattach"), "--remove", str(unsigned)], check=True, capture_output=True)
    secureboot.keygen(tmp / "other-keys")
    foreign = tmp / "foreign.efi"
    uki.build(OUT / "vmlinuz", STAGE1, cmdline, foreign, tmp / "other-keys")
    data = bytearray(signed.read_bytes())
    data[len(data) // 2] ^= 0x01
    (tampered := tmp / "tampered.efi").write_bytes(bytes(data))
    return unsigned, foreign, tampered, signed


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory,
             https_stage1: tuple[Path, tuple[Path, Path]]) -> dict[str, tuple[int, str, VM]]:
    """Three machines side by side, each stopped by a refusal:
    - "secure boot": UEFI Secure Boot on with the project's keys, four ESPs (secure_boot_images);
      the UKI that runs fetches a stage 2 with a flipped byte (over HTTP);
    - "nic": the same firmware and keys; the network hands its NIC the UKI unsigned;
    - "replay": LinuxBoot's stage 1 fetches, over HTTPS, a manifest whose serial is below the
      minimum built into it (an older payload replayed).
    {case: (QEMU's status, the console, the VM)}."""
    tmp = tmp_path_factory.mktemp("refusals")
    initrd, https_pair = https_stage1
    servers, vms = [], {}
    try:
        payload = signed_payload(tmp / "sb", KEYS / "signing.key", secure_boot_keys=KEYS)
        flip_a_byte(payload)
        servers.append(srv := netboot.serve_in_thread(payload))
        vm = make_vm(tmp / "sb" / "vm")
        vm.efi = secure_boot_images(tmp / "sb", f"{CMDLINE} k4s.payload=http://10.0.2.2:{srv.server_address[1]}/")
        vm.secure_boot, vm.uefi_vars, vm.seeded = True, UEFI_VARS, False
        vms["secure boot"] = vm
        # a machine that boots its NIC, which the network hands the UKI unsigned: stopped at the
        # firmware's refusal (it would go on to try HTTP boot, a minute each for IPv4 and IPv6)
        nic = make_vm(tmp / "nic" / "vm")
        nic.uefi, nic.secure_boot, nic.uefi_vars, nic.seeded = True, True, UEFI_VARS, False
        nic.pxe = tmp / "nic" / "tftp"
        nic.pxe.mkdir(parents=True)
        shutil.copy(vm.efi[0], nic.pxe / netboot.UEFI_IMAGE)
        vms["nic"] = nic
        payload = signed_payload(tmp / "replay", KEYS / "signing.key", MIN_SERIAL - 1)
        servers.append(srv := netboot.serve_in_thread(payload, tls=https_pair))
        vms["replay"] = stage1_vm(tmp / "replay", srv.server_address[1], "https", initrd)
        ended = boot_side_by_side(list(vms.values()),
                                  until=[Console(": Access Denied") if case == "nic" else EXIT for case in vms])
    finally:
        for srv in servers:
            srv.shutdown()
    return {case: (rc, console, vm) for (case, vm), (rc, console) in zip(vms.items(), ended, strict=True)}


def test_the_firmware_refuses_unsigned_foreign_and_tampered_ukis_and_runs_the_signed_one(refusals) -> None:
    """OVMF's Secure Boot build, the project's PK, KEK and db enrolled by the build: the firmware
    itself refuses stage 1 unsigned, signed by another key and with one byte flipped (each on the
    console, by the PCI slot of its disk), then starts the signed one; only then does any kernel
    run, and it runs locked down. Handed the unsigned UKI by the network, the firmware's PXE
    refuses it too (the signed one over PXE: the fleet's rejoin, tests/e2e/test_fleet.py)."""
    rc, console, vm = refusals["secure boot"]
    lines = firmware_lines(console)
    at = {}
    for i, what in enumerate(("unsigned", "foreign", "tampered", "signed")):
        slot = f"PciRoot(0x0)/Pci({ESP_SLOT + i:#x},0x0)"
        if what == "signed":
            [start] = [n for n, ln in enumerate(lines) if ln.startswith("BdsDxe: starting") and slot in ln]
            at[what] = start
        else:
            [refused] = [n for n, ln in enumerate(lines) if ln.startswith("BdsDxe: failed to load")
                         and ln.endswith(f"{slot}: Access Denied")]
            at[what] = refused
    assert at["unsigned"] < at["foreign"] < at["tampered"] < at["signed"], at
    first_kernel = next(n for n, ln in enumerate(lines) if ln.startswith(("EFI stub:", "[", "k4s")))
    assert first_kernel > at["signed"], lines[: at["signed"] + 3]
    [fw] = [e for e in (json.loads(ln) for ln in vm.events.read_text().splitlines() if ln.startswith("{"))
            if events.STAGE1_FIRMWARE.matches(e)]
    assert (fw["firmware"], fw["secure_boot"], fw["lockdown"]) == ("uefi", "on", "integrity"), fw
    assert rc == 0
    _, console, _ = refusals["nic"]
    lines = firmware_lines(console)
    assert any(ln.startswith("NBP filename is stage1.efi") for ln in lines), lines
    refused = [ln for ln in lines if ln.startswith("BdsDxe: failed to load") and "UEFI PXEv4" in ln]
    assert len(refused) == 1 and refused[0].endswith(": Access Denied"), lines
    assert not any(ln.startswith(("EFI stub", "k4s", "[")) for ln in lines), lines


def test_tampered_stage2_is_refused_and_nothing_runs(refusals) -> None:
    """One flipped byte in the initramfs (over HTTP, fetched by the UKI under Secure Boot), and
    over HTTPS a manifest whose serial is below the minimum built into stage 1 (an older payload
    replayed): each time one console line naming the artifact and the reason, no kexec, the VM
    powers off. A manifest signed by another key and a server whose certificate is not from
    stage 1's CA take the same path to the console; they are refused in tests/unit
    (test_manifest, test_stage1)."""
    messages = {"secure boot": "initramfs.cpio.zst: sha256 differs from the signed manifest",
                "replay": f"serial {MIN_SERIAL - 1} is below this stage 1's minimum {MIN_SERIAL}"}
    for case, message in messages.items():
        rc, console, _ = refusals[case]
        errors = [ln for ln in firmware_lines(console) if ln.startswith("k4s stage1: error:")]
        assert len(errors) == 1 and message in errors[0] and "(hint: " in errors[0], console[-2000:]
        assert "(kexec)" not in console and "k4s init: starting" not in console and "component=etcd" not in console
        assert rc == 0 and "k4s: poweroff" in console and "Kernel panic" not in console
