"""UEFI Secure Boot on the build host: the owner's keys, the signed stage-1 UKI, the enrolled
variable store and the ESP, checked with the tools a firmware vendor or an operator would use
(openssl, sbverify, pefile, virt-fw-vars, mtools). The firmware's own checks: tests/e2e/test_netboot.py."""

from __future__ import annotations

import json
import stat
import struct
import subprocess
import uuid
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from k4s.errors import K4sError
from k4s.host import secureboot
from k4s.host.vm import ESP_SLOT, VM
from k4s.mkimage import uki
from tests.conftest import k4s_cmd, tool

CMDLINE = "console=ttyS0 quiet k4s.payload=https://boot.example/k4s/"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    for t in ("sbsign", "sbverify", "objcopy", "virt-fw-vars", "mkfs.vfat", "mcopy"):
        tool(t)
    d = tmp_path_factory.mktemp("sb") / "keys"
    r = k4s_cmd("keygen", "--dir", str(d), timeout=120)
    assert r.returncode == 0, r.stderr
    return d


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("parts")
    (d / "vmlinuz").write_bytes(b"MZ kernel " + bytes(range(256)) * 300)
    (d / "stage1.cpio.xz").write_bytes(b"\xfd7zXZ initrd " + bytes(range(255, -1, -1)) * 500)
    return d / "vmlinuz", d / "stage1.cpio.xz"


def build(keys: Path, parts: tuple[Path, Path], out: Path, cmdline: str = CMDLINE) -> Path:
    r = k4s_cmd("uki", "--kernel", str(parts[0]), "--initrd", str(parts[1]), "--cmdline", cmdline,
                "--keys", str(keys), "--out", str(out), timeout=120)
    assert r.returncode == 0, r.stderr
    return out


def sbverify(image: Path, cert: Path) -> bool:
    return subprocess.run([tool("sbverify"), "--cert", str(cert), str(image)], capture_output=True).returncode == 0


def one_line_error(r: subprocess.CompletedProcess[str], *words: str) -> str:
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "(hint: " in lines[0] and "Traceback" not in r.stderr, r.stderr
    for w in words:
        assert w in lines[0], lines[0]
    return lines[0]


def test_keygen_makes_private_keys_and_self_signed_certificates_and_never_replaces_one(keys: Path) -> None:
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700
    for kind in secureboot.KEYS:
        key, crt = keys / f"{kind}.key", keys / f"{kind}.crt"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE(crt.stat().st_mode) == 0o644
        text = subprocess.run(["openssl", "x509", "-in", str(crt), "-noout", "-text"], capture_output=True,
                              text=True, check=True).stdout
        assert "Public-Key: (2048 bit)" in text and "sha256WithRSAEncryption" in text and "CA:TRUE" in text
        subject = [ln for ln in text.splitlines() if "Subject:" in ln][0].split("Subject:")[1].strip()
        assert kind in subject and f"Issuer: {subject}" in text  # self-signed
        # the key and the certificate are one pair
        mod = [subprocess.run(["openssl", kind_, "-in", str(p), "-noout", "-modulus"], capture_output=True,
                              text=True, check=True).stdout for kind_, p in (("rsa", key), ("x509", crt))]
        assert mod[0] == mod[1]
    assert (keys / "signing.key").exists()  # the payload key beside them
    before = {p.name: p.read_bytes() for p in keys.iterdir()}
    one_line_error(k4s_cmd("keygen", "--dir", str(keys)), "refusing to replace")
    assert {p.name: p.read_bytes() for p in keys.iterdir()} == before


def test_keygen_adds_only_what_is_missing(tmp_path: Path, keys: Path) -> None:
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    for p in keys.iterdir():
        if not p.name.startswith("db."):
            (d / p.name).write_bytes(p.read_bytes())
    r = k4s_cmd("keygen", "--dir", str(d), timeout=120)
    assert r.returncode == 0, r.stderr
    assert sorted(ln.split()[0] for ln in r.stdout.splitlines()) == [str(d / "db.crt"), str(d / "db.key")]
    for p in keys.iterdir():
        if not p.name.startswith("db."):
            assert (d / p.name).read_bytes() == p.read_bytes()


def test_the_uki_holds_kernel_initrd_and_command_line_and_verifies_only_with_db(
        tmp_path: Path, keys: Path, parts: tuple[Path, Path]) -> None:
    pefile = pytest.importorskip("pefile")
    image = build(keys, parts, tmp_path / "stage1.efi")
    pe = pefile.PE(str(image))
    sections = {s.Name.rstrip(b"\0").decode(): s for s in pe.sections}
    assert pe.OPTIONAL_HEADER.Subsystem == 10  # an EFI application
    assert sections[".cmdline"].get_data()[: sections[".cmdline"].Misc_VirtualSize] == CMDLINE.encode()
    for name, src in ((".linux", parts[0]), (".initrd", parts[1])):
        s = sections[name]
        assert s.get_data()[: s.Misc_VirtualSize] == src.read_bytes(), name
    assert b"ID=k4s" in sections[".osrel"].get_data()
    stub_end = max(s.VirtualAddress + s.Misc_VirtualSize for n, s in sections.items()
                   if n in (".text", ".data", ".sdmagic", ".sbat"))
    added = sorted(sections[n].VirtualAddress for n in (".osrel", ".cmdline", ".initrd", ".linux"))
    assert added[0] >= stub_end and all(a % pe.OPTIONAL_HEADER.SectionAlignment == 0 for a in added)
    assert sbverify(image, keys / "db.crt")
    assert not sbverify(image, keys / "PK.crt") and not sbverify(image, keys / "KEK.crt")
    tampered = bytearray(image.read_bytes())
    tampered[sections[".cmdline"].PointerToRawData + 10] ^= 0x01  # k4s.payload= points elsewhere
    (tmp_path / "tampered.efi").write_bytes(bytes(tampered))
    assert not sbverify(tmp_path / "tampered.efi", keys / "db.crt")


def test_the_unsigned_uki_is_reproducible(tmp_path: Path, keys: Path, parts: tuple[Path, Path]) -> None:
    """Two builds of one input differ only in the signature's time: without it, byte for byte one file."""
    a, b = build(keys, parts, tmp_path / "a.efi"), build(keys, parts, tmp_path / "b.efi")
    for p in (a, b):
        subprocess.run([tool("sbattach"), "--remove", str(p)], check=True, capture_output=True)
    assert a.read_bytes() == b.read_bytes()


def test_signing_replaces_a_signature_the_owner_does_not_trust(tmp_path: Path, keys: Path,
                                                                parts: tuple[Path, Path]) -> None:
    """Stage 2's kernel arrives signed by its distribution; the owner's db key re-signs it."""
    other = tmp_path / "other"
    assert k4s_cmd("keygen", "--dir", str(other), timeout=120).returncode == 0
    foreign = build(other, parts, tmp_path / "foreign.efi")
    assert not sbverify(foreign, keys / "db.crt")
    ours = secureboot.sign(foreign, tmp_path / "ours.efi", keys)
    assert sbverify(ours, keys / "db.crt") and not sbverify(ours, other / "db.crt")
    listed = subprocess.run([tool("sbverify"), "--list", str(ours)], capture_output=True, text=True).stdout
    assert "signature 1\n" in listed and "signature 2" not in listed, listed  # replaced: the kernel checks only the first


def test_the_enrolled_store_holds_the_owner_keys_with_secure_boot_on(tmp_path: Path, keys: Path) -> None:
    store = secureboot.enroll(tmp_path / "vars.fd", keys)
    dump = tmp_path / "vars.json"
    subprocess.run([tool("virt-fw-vars"), "--input", str(store), "--output-json", str(dump)], check=True,
                   capture_output=True)
    variables = {v["name"]: v for v in json.loads(dump.read_text())["variables"]}
    assert {"PK", "KEK", "db", "SecureBootEnable"} <= set(variables), sorted(variables)
    assert variables["SecureBootEnable"]["data"] == "01"
    owner = uuid.UUID(secureboot.owner_guid(keys)).bytes_le.hex()
    for kind in secureboot.KEYS:
        der = x509.load_pem_x509_certificate((keys / f"{kind}.crt").read_bytes()).public_bytes(Encoding.DER)
        # an EFI signature list of one X.509 entry: the owner's GUID, then the certificate
        assert owner + der.hex() in variables[kind]["data"], kind


def test_the_esp_holds_the_image_at_the_removable_media_path(tmp_path: Path, keys: Path,
                                                             parts: tuple[Path, Path]) -> None:
    image = build(keys, parts, tmp_path / "stage1.efi")
    disk = secureboot.esp(image, tmp_path / "esp.img")
    got = subprocess.run([tool("mcopy"), "-i", str(disk), secureboot.ESP_BOOT_PATH, "-"], capture_output=True,
                         env={"MTOOLS_SKIP_CHECK": "1"}, check=True).stdout
    assert got == image.read_bytes()


def test_a_secure_boot_vm_boots_the_firmware_from_one_esp_per_image_in_order(tmp_path: Path, keys: Path,
                                                                           parts: tuple[Path, Path]) -> None:
    tool("qemu-system-x86_64")
    images = (build(keys, parts, tmp_path / "a.efi"), build(keys, parts, tmp_path / "b.efi"))
    vm = VM(tmp_path / "vm", Path("/nonexistent"), Path("/nonexistent"), efi=images, secure_boot=True,
            uefi_vars=secureboot.enroll(tmp_path / "vars.fd", keys), seeded=False)
    vm.out.mkdir()
    argv = " ".join(vm.argv())
    assert "-kernel" not in argv and "q35,smm=on," in argv and "cfi.pflash01,property=secure,value=on" in argv
    assert f"file={secureboot.OVMF_CODE_SECURE}" in argv and f"file={vm.out / 'uefi-vars.fd'}" in argv
    assert (vm.out / "uefi-vars.fd").read_bytes() == (tmp_path / "vars.fd").read_bytes()  # a copy: never the build's
    for i in range(2):
        assert f"addr={ESP_SLOT + i:#x},bootindex={i + 1}" in argv and f"file={vm.out / f'esp{i}.img'}" in argv
    assert "romfile=" in argv and "bootfile=" not in argv  # the firmware's PXE, not iPXE's ROM; no NIC boot
    # with a pxe directory, the NIC boots first: the UKI over QEMU's TFTP, then the disks
    vm.pxe = tmp_path / "netboot"
    argv = " ".join(vm.argv())
    assert f"tftp={vm.pxe},bootfile=stage1.efi" in argv and "virtio-net-pci,netdev=n0,romfile=,bootindex=1" in argv
    assert f"addr={ESP_SLOT:#x},bootindex=2" in argv and f"addr={ESP_SLOT + 1:#x},bootindex=3" in argv


@pytest.mark.parametrize("case", ["no keys", "stub not PE", "no initrd", "newline", "unwritable"])
def test_bad_uki_inputs_are_one_line_and_write_nothing(tmp_path: Path, keys: Path, parts: tuple[Path, Path],
                                                        case: str) -> None:
    out = tmp_path / "stage1.efi"
    if case == "stub not PE":
        (tmp_path / "stub").write_bytes(b"#!/bin/sh\n" * 100)
        with pytest.raises(K4sError, match="not an x86-64 EFI stub"):
            uki.build(parts[0], parts[1], CMDLINE, out, keys, stub=tmp_path / "stub")
        assert not out.exists()
        return
    args = {"no keys": ["--keys", str(tmp_path / "nokeys")], "no initrd": ["--initrd", str(tmp_path / "none")],
            "newline": ["--cmdline", "a\nb"], "unwritable": ["--out", "/proc/stage1.efi"]}[case]
    base = {"--kernel": str(parts[0]), "--initrd": str(parts[1]), "--cmdline": CMDLINE, "--keys": str(keys),
            "--out": str(out)}
    base[args[0]] = args[1]
    r = k4s_cmd("uki", *[x for kv in base.items() for x in kv], timeout=120)
    word = {"no keys": "k4s keygen", "no initrd": "make stage1", "newline": "newline",
            "unwritable": "cannot write"}[case]
    one_line_error(r, word)
    assert not out.exists() and not list(tmp_path.glob(".stage1.efi.*"))


def test_the_boot_reads_secure_boot_and_lockdown_as_the_kernel_reports_them(tmp_path: Path) -> None:
    """What the firmware event says (stage 1 and init): from efivarfs and securityfs."""
    from k4s.sys import firmware

    efi, sec, tpm = tmp_path / "efi", tmp_path / "security", tmp_path / "tpm0"
    assert firmware.trust(efi, sec, tpm) == {"firmware": "bios", "secure_boot": "off", "lockdown": "unknown"}
    (efi / "efivars").mkdir(parents=True)
    sec.mkdir()
    (sec / "lockdown").write_text("none [integrity] confidentiality\n")
    assert firmware.trust(efi, sec, tpm) == {"firmware": "uefi", "secure_boot": "off", "lockdown": "integrity"}
    var = efi / "efivars" / firmware.SECURE_BOOT_VAR
    var.write_bytes(b"\x06\x00\x00\x00\x01")  # attributes (boot service, runtime access), then on
    assert firmware.trust(efi, sec)["secure_boot"] == "on"
    var.write_bytes(b"\x06\x00\x00\x00\x00")
    assert firmware.trust(efi, sec)["secure_boot"] == "off"
    var.write_bytes(b"\x01")  # truncated: not on
    assert firmware.trust(efi, sec)["secure_boot"] == "off"
    (tpm / "pcr-sha256").mkdir(parents=True)
    (tpm / "pcr-sha256" / "15").write_text("AB" * 32 + "\n")  # the kernel's sysfs: uppercase hex
    assert firmware.trust(efi, sec, tpm)["pcr15"] == "ab" * 32


def test_a_payload_for_uefi_nics_has_the_uki_outside_the_manifest_and_a_kernel_signed_with_db(
        tmp_path: Path, keys: Path, parts: tuple[Path, Path]) -> None:
    """`netboot prepare`: stage1.efi beside the payload (the firmware verifies it, not the
    manifest), and the kernel re-signed with db, which a locked-down stage 1 requires to kexec."""
    from k4s.host import netboot
    from k4s.image import manifest

    image = build(keys, parts, tmp_path / "stage1.efi")
    kernel = build(keys, parts, tmp_path / "kernel.efi")  # a PE image stands in for a bzImage
    other = tmp_path / "other"
    assert k4s_cmd("keygen", "--dir", str(other), timeout=120).returncode == 0
    foreign_kernel = secureboot.sign(kernel, tmp_path / "foreign-kernel.efi", other)  # as a distribution's
    payload = tmp_path / "payload"
    files = netboot.prepare(payload, foreign_kernel, [parts[1]], "console=ttyS0", key=other / "signing.key",
                            secure_boot_keys=keys, uki=image)
    assert files[-1] == netboot.UEFI_IMAGE and (payload / netboot.UEFI_IMAGE).read_bytes() == image.read_bytes()
    m = manifest.verify_dir(payload, manifest.public_key(other / "signing.pub"))
    assert netboot.UEFI_IMAGE not in {a.name for a in m.artifacts}
    assert sbverify(payload / netboot.KERNEL, keys / "db.crt") and not sbverify(payload / netboot.KERNEL,
                                                                               other / "db.crt")
    assert sbverify(foreign_kernel, other / "db.crt")  # the input is left as it was


def test_the_extend_command_is_what_a_tpm_accepts_and_the_pcr_is_predictable(tmp_path: Path) -> None:
    """Stage 1's TPM2_PCR_Extend, sent to a real TPM (swtpm, libtpms): it answers success and
    PCR 15 then holds exactly what `k4s verify --pcr` predicts from the same digests."""
    import hashlib
    import struct

    from k4s.image import manifest
    from k4s.sys import tpm
    from tests.conftest import swtpm

    with swtpm(tmp_path) as connect, connect() as t:
        def transact(command: bytes) -> tuple[int, bytes]:
            response = t.raw(command)
            return struct.unpack(">I", response[6:10])[0], response[10:]

        measured = [("manifest.json", hashlib.sha256(b"m").hexdigest()), ("vmlinuz", hashlib.sha256(b"k").hexdigest())]
        for _, digest in measured:
            assert transact(tpm.extend_command(tpm.MEASURED_PCR, bytes.fromhex(digest)))[0] == 0
        # TPM2_PCR_Read(sha256, {15}): no sessions; the answer ends with the one digest
        select = struct.pack(">IHB3s", 1, tpm.TPM_ALG_SHA256, 3, (1 << 15).to_bytes(3, "little"))
        rc, body = transact(struct.pack(">HII", 0x8001, 10 + len(select), 0x17E) + select)
        assert rc == 0 and body[-32:].hex() == manifest.predict_pcr(measured)
        assert transact(tpm.extend_command(tpm.MEASURED_PCR, bytes.fromhex(measured[0][1]))[:-1])[0] != 0  # short
    with pytest.raises(ValueError):
        tpm.extend_command(24, bytes(32))


def test_stage_2_gets_stage_1_s_measurement_log_and_replays_it_against_the_pcr(tmp_path: Path) -> None:
    """Stage 1 hands on what it extended PCR 15 with (the TCG canonical event log's JSON records,
    as systemd writes its own) in its last segment; stage 2's firmware event and `k4s status`
    replay it: equal to the PCR, the log says what booted; a log short of one record does not."""
    import io

    from applets.status import render
    from k4s import layout
    from k4s.boot import stage1
    from k4s.host import netboot
    from k4s.image import cpio, manifest
    from k4s.sys import firmware, tpm

    manifest.keygen(tmp_path / "keys")
    (tmp_path / "vmlinuz").write_bytes(b"K" * 5000)
    (tmp_path / "initramfs").write_bytes(b"I" * 3000)
    payload = tmp_path / "payload"
    netboot.prepare(payload, tmp_path / "vmlinuz", [tmp_path / "initramfs"], "console=ttyS0",
                    key=tmp_path / "keys" / "signing.key")
    m = manifest.verify_dir(payload, manifest.public_key(tmp_path / "keys" / "signing.pub"))
    measured = manifest.measurements(m)
    segment = stage1.handoff(m, measured, tmp_path / "handoff.cpio")
    [member] = [x for x in cpio.read(segment.read_bytes()) if x.name == layout.member(layout.MEASURE_LOG)]
    log = tmp_path / "tpm2-measure.log"
    log.write_bytes(member.data)
    first = json.loads(member.data.decode().splitlines()[0])
    assert first["content_type"] == "k4s" and first["pcr"] == 15 and first["content"]["string"] == "manifest.json"
    assert first["digests"] == [{"hashAlg": "sha256", "digest": measured[0][1]}]

    sysfs = tmp_path / "tpm0"
    (sysfs / "pcr-sha256").mkdir(parents=True)
    (sysfs / "pcr-sha256" / "7").write_text("CD" * 32)
    (sysfs / "pcr-sha256" / "15").write_text(manifest.predict_pcr(measured).upper())
    m_boot = firmware.measured(sysfs, log)
    assert m_boot is not None and m_boot["replays"] and [r["name"] for r in m_boot["log"]] == \
        ["manifest.json", "vmlinuz", "initramfs"]
    fields = firmware.trust(tmp_path / "efi", tmp_path / "sec", sysfs, log)
    assert (fields["log_events"], fields["log_replays"]) == ("3", "yes")
    out = io.StringIO()
    render({"components": {}, "measured": m_boot}, out)
    assert f"measured boot: PCR 7 sha256:{'cd' * 32}, PCR 15 sha256:{manifest.predict_pcr(measured)}" in out.getvalue()
    assert "stage 1's log, 3 events, replays to PCR 15:" in out.getvalue()
    assert f"    PCR 15 sha256:{measured[1][1]} vmlinuz" in out.getvalue()

    log.write_text("".join(member.data.decode().splitlines(keepends=True)[:2]))  # a record short
    assert firmware.trust(tmp_path / "efi", tmp_path / "sec", sysfs, log)["log_replays"] == "no"
    log.write_text("{not a record\n")
    m_bad = firmware.measured(sysfs, log)
    assert m_bad is not None and "not a measurement log" in m_bad["error"] and not m_bad["replays"]
    assert tpm.read_log(tmp_path / "none") == []


def pe_header(magic: int = 0x20B, base: int = 0x140000000, alignment: int = 0x1000, size: int = 0x20000) -> bytes:
    """The first bytes of a PE image: the DOS header's pointer, the signature, the optional header's fields."""
    pe = bytearray(4096)
    pe[:2], pe[0x3C:0x40], pe[0x80:0x84] = b"MZ", struct.pack("<I", 0x80), b"PE\0\0"
    opt = 0x80 + 24
    struct.pack_into("<H", pe, opt, magic)
    struct.pack_into("<Q", pe, opt + 24, base)
    struct.pack_into("<I", pe, opt + 32, alignment)
    struct.pack_into("<I", pe, opt + 56, size)
    return bytes(pe)


def test_sections_are_added_past_the_stub_s_image_at_its_image_base() -> None:
    assert uki.image_end(pe_header(), Path("stub")) == (0x140020000, 0x1000)
    assert uki.image_end(pe_header(base=0), Path("stub")) == (0x20000, 0x1000)  # Debian's stub
    for bad in (pe_header(magic=0x10B), b"MZ" + bytes(100), b""):
        with pytest.raises(K4sError, match="stub is not an x86-64 EFI stub"):
            uki.image_end(bad, Path("stub"))
