"""The sealed data disk against a real TPM (swtpm) and the real cryptsetup, on a disk image file:
sealing and unsealing, what each refusal says, and hostile headers. Opening the volume needs
dm-crypt, which only the guest has (tests/e2e/test_fleet.py boots it)."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from pathlib import Path

import pytest

from k4s.boot import datadisk, sealeddisk
from k4s.errors import K4sError
from k4s.sys import tpm
from tests.conftest import swtpm, tool

PAYLOAD_A, PAYLOAD_B = hashlib.sha256(b"manifest A").digest(), hashlib.sha256(b"manifest B").digest()


def blank(tmp: Path, mib: int = 24) -> Path:
    disk = tmp / "disk.img"
    with open(disk, "wb") as f:
        f.truncate(mib << 20)
    return disk


def opens_with(disk: Path, key: bytes) -> bool:
    """cryptsetup itself: does this key open a keyslot of the volume (no dm-crypt needed)?"""
    r = subprocess.run([tool("cryptsetup"), "open", "--test-passphrase", "--key-file", "-", str(disk)],
                       input=key, capture_output=True, timeout=60)
    return r.returncode == 0


def test_a_secret_unseals_only_on_its_tpm_under_its_pcr_values(tmp_path: Path) -> None:
    with swtpm(tmp_path / "a") as connect, connect() as t:
        t.extend(tpm.MEASURED_PCR, PAYLOAD_A)
        sealed = t.seal(b"k" * 32)
        # the policy is what the operator predicts from the PCR values alone
        assert sealed.policy == tpm.policy_pcr_digest(t.pcr_values(tpm.SEALED_PCRS))
        assert t.unseal(sealed) == b"k" * 32
        assert t.unseal(sealed) == b"k" * 32  # as often as it boots
        with swtpm(tmp_path / "b") as other, other() as t2:
            t2.extend(tpm.MEASURED_PCR, PAYLOAD_A)  # the same payload, another machine
            with pytest.raises(tpm.TpmError) as e:
                t2.unseal(sealed)
            assert e.value.integrity_failed and not e.value.policy_failed, hex(e.value.rc)
        t.extend(tpm.MEASURED_PCR, PAYLOAD_B)  # the same machine, PCR 15 moved on
        with pytest.raises(tpm.TpmError) as e:
            t.unseal(sealed)
        assert e.value.policy_failed, hex(e.value.rc)
        with pytest.raises(ValueError):
            t.seal(bytes(tpm.MAX_SEALED + 1))


def test_a_blank_disk_becomes_a_volume_whose_key_only_its_tpm_and_payload_give(tmp_path: Path) -> None:
    disk = blank(tmp_path)
    with swtpm(tmp_path / "tpm") as connect:
        with connect() as t:
            t.extend(tpm.MEASURED_PCR, PAYLOAD_A)
            key = sealeddisk.format_sealed(disk, "K4SDATA", t)
        assert opens_with(disk, key) and not opens_with(disk, bytes(32))
        # the disk says what it is: LUKS2 with the label k4s.data=LABEL= finds
        kind, label = datadisk.classify(disk.read_bytes()[:datadisk.PROBE_BYTES])
        assert (kind, label) == ("luks", "K4SDATA")
        assert datadisk.choose("LABEL=K4SDATA", False, [datadisk.probe(disk)])[1] == ""  # found, not formatted
        token = sealeddisk.Token.find(sealeddisk.metadata(disk), str(disk))
        assert token.sealed.pcrs == (7, 15) and key not in disk.read_bytes()
        with connect() as t:
            assert token.values[15] == t.pcr_values([15])[0][1].hex()
            assert sealeddisk.unseal(disk, t) == key  # the next boot, same payload
            t.extend(tpm.MEASURED_PCR, PAYLOAD_B)  # another payload
            with pytest.raises(K4sError) as e:
                sealeddisk.unseal(disk, t)
    assert "stays locked" in e.value.message and "PCR 15 (the payload)" in e.value.message
    assert "PCR 7" not in e.value.message and token.values[15][:16] in e.value.message
    with swtpm(tmp_path / "other") as connect, connect() as t:  # the disk moved to another machine
        t.extend(tpm.MEASURED_PCR, PAYLOAD_A)
        with pytest.raises(K4sError) as e:
            sealeddisk.unseal(disk, t)
    assert "stays locked" in e.value.message and "another machine's TPM" in e.value.message


def test_sealing_needs_a_measured_payload_and_a_failed_format_leaves_the_disk_blank(tmp_path: Path,
                                                                                  monkeypatch) -> None:
    disk = blank(tmp_path)
    with swtpm(tmp_path / "tpm") as connect, connect() as t:
        with pytest.raises(K4sError) as e:  # PCR 15 all zeros: no stage 1 measured anything
            sealeddisk.format_sealed(disk, "K4SDATA", t)
        assert "did not come through stage 1" in e.value.message
        t.extend(tpm.MEASURED_PCR, PAYLOAD_A)
        monkeypatch.setattr(sealeddisk, "TOKEN_TYPE", "x" * 70000)  # a token cryptsetup refuses
        with pytest.raises(K4sError) as e:
            sealeddisk.format_sealed(disk, "K4SDATA", t)
    assert e.value.message.startswith("data disk: writing the sealed key to")
    assert datadisk.probe(disk).kind == "blank"  # formatted, refused, zeroed again


def luks_header(meta: bytes | None = None, size: int = 16384, version: int = 2) -> bytes:
    head = bytearray(sealeddisk.MAGIC + struct.pack(">HQ", version, size))
    head += bytes(4096 - len(head))
    head[sealeddisk.LABEL_AT:sealeddisk.LABEL_AT + 7] = b"K4SDATA"
    return bytes(head) + (meta or b"").ljust(min(max(size - 4096, 0), 1 << 16), b"\0")


@pytest.mark.parametrize("head, says", [
    (luks_header(b"{}"), "k4s did not seal"),
    (luks_header(json.dumps({"tokens": {"0": {"type": "systemd-tpm2"}}}).encode()), "k4s did not seal"),
    (luks_header(json.dumps({"tokens": {"0": {"type": "k4s-tpm2", "tpm2-pcrs": ["x"]}}}).encode()), "malformed"),
    (luks_header(json.dumps({"tokens": {"0": {"type": "k4s-tpm2", "tpm2-pcrs": [15], "tpm2-public": "@@",
                                              "tpm2-private": "", "tpm2-policy-hash": ""}}}).encode()), "malformed"),
    (luks_header(json.dumps({"tokens": {"0": {"type": "k4s-tpm2", "tpm2-pcrs": [99], "tpm2-public": "",
                                              "tpm2-private": "", "tpm2-policy-hash": ""}}}).encode()), "malformed"),
    (luks_header(json.dumps({"tokens": {"0": {"type": "k4s-tpm2", "tpm2-pcrs": [], "tpm2-public": "",
                                              "tpm2-private": "", "tpm2-policy-hash": ""}}}).encode()), "malformed"),
    (luks_header(b"{not json"), "not JSON"),
    (luks_header(b"[]"), "not an object"),
    (luks_header(size=1 << 40), "claims"),
    (luks_header(size=100), "claims"),
    (luks_header(b"{}", version=1), "not a LUKS2 volume"),
])
def test_a_hostile_header_is_one_line_in_bounded_memory(tmp_path: Path, head: bytes, says: str) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(head)
    with pytest.raises(K4sError) as e:
        sealeddisk.Token.find(sealeddisk.metadata(disk), str(disk))
    assert says in e.value.message and "\n" not in e.value.message


def test_a_sealed_disk_on_a_machine_without_a_tpm_stays_locked_with_one_line(tmp_path: Path) -> None:
    disk = tmp_path / "disk.img"
    disk.write_bytes(luks_header(b"{}"))
    with pytest.raises(K4sError) as e:
        sealeddisk.unlock(disk, device=tmp_path / "tpmrm0")
    assert "stays locked" in e.value.message and "has none" in e.value.message and e.value.hint
