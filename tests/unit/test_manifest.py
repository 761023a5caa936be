"""Signed payload manifests: keygen, sign, verify, and every way a payload is refused."""

from __future__ import annotations

import hashlib
import stat

import pytest

from k4s.errors import K4sError
from k4s.image import manifest
from k4s.image.manifest import VerifyError
from tests.conftest import k4s_cmd


@pytest.fixture
def payload(tmp_path):  # type: ignore[no-untyped-def]
    keys = tmp_path / "keys"
    manifest.keygen(keys)
    d = tmp_path / "payload"
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"kernel" * 1000)
    (d / "initramfs.cpio.zst").write_bytes(bytes(range(256)) * 100)
    manifest.sign(d, keys / "signing.key", [("vmlinuz", "kernel"), ("initramfs.cpio.zst", "initrd")],
                  "console=ttyS0 k4s.payload=http://10.0.2.2:8080/")
    return d, manifest.public_key(keys / "signing.pub"), keys


def test_keys_are_private_and_never_replaced(tmp_path) -> None:
    key, pub = manifest.keygen(tmp_path / "k")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and stat.S_IMODE((tmp_path / "k").stat().st_mode) == 0o700
    assert pub.read_text().startswith("k4s-ed25519 ")
    before = key.read_bytes()
    with pytest.raises(K4sError, match="refusing to replace"):
        manifest.keygen(tmp_path / "k")
    r = k4s_cmd("keygen", "--dir", str(tmp_path / "k"), timeout=120)  # adds only what is missing: Secure Boot's
    assert r.returncode == 0 and key.read_bytes() == before and "signing.key" not in r.stdout, r.stdout
    r = k4s_cmd("keygen", "--dir", str(tmp_path / "k"))
    assert r.returncode == 1 and "refusing to replace" in r.stderr and r.stderr.count("\n") == 1
    assert key.read_bytes() == before


def test_a_good_payload_verifies(payload) -> None:
    d, pub, keys = payload
    m = manifest.verify_dir(d, pub)
    assert [a.role for a in m.artifacts] == ["kernel", "initrd"] and "k4s.payload=" in m.cmdline
    r = k4s_cmd("verify", str(d), "--pubkey", str(keys / "signing.pub"))
    assert r.returncode == 0 and r.stdout.count("ok ") == 2
    assert "serial " in r.stdout and "for a server, expires 20" in r.stdout, r.stdout
    # the PCR stage 1 measures it into: sha256 folds of the manifest's bytes, the kernel, the initrd
    r = k4s_cmd("verify", str(d), "--pubkey", str(keys / "signing.pub"), "--pcr")
    value = bytes(32)
    for digest in (hashlib.sha256((d / "manifest.json").read_bytes()).digest(),
                   *(bytes.fromhex(a.sha256) for a in m.artifacts)):
        value = hashlib.sha256(value + digest).digest()
    assert f"pcr15 sha256:{value.hex()} (extended with manifest.json, " in r.stdout, r.stdout


def flip(path, at: int = 100) -> None:  # type: ignore[no-untyped-def]
    data = bytearray(path.read_bytes())
    data[at] ^= 1
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("tamper,message", [
    (lambda d: flip(d / "initramfs.cpio.zst"), "initramfs.cpio.zst: sha256 differs from the signed manifest"),
    (lambda d: flip(d / "vmlinuz", 0), "vmlinuz: sha256 differs"),
    (lambda d: (d / "initramfs.cpio.zst").write_bytes((d / "initramfs.cpio.zst").read_bytes()[:-1]),
     "initramfs.cpio.zst: truncated"),
    (lambda d: (d / "vmlinuz").write_bytes((d / "vmlinuz").read_bytes() + b"x"), "vmlinuz: longer than"),
    (lambda d: (d / "manifest.sig").unlink(), "manifest.sig: missing"),
    (lambda d: (d / "manifest.sig").write_text("AAAA\n"), "manifest.sig: missing or not an Ed25519 signature"),
    (lambda d: (d / "manifest.json").write_bytes((d / "manifest.json").read_bytes().replace(b"ttyS0", b"ttyS1")),
     "manifest.json: the signature does not verify"),
    (lambda d: (d / "extra.img").write_bytes(b"x"), "extra.img: not in the signed manifest"),
])
def test_a_tampered_payload_is_one_line_naming_the_artifact(payload, tamper, message) -> None:
    d, pub, keys = payload
    tamper(d)
    with pytest.raises(VerifyError) as e:
        manifest.verify_dir(d, pub)
    assert message in e.value.message and "\n" not in e.value.render()
    r = k4s_cmd("verify", str(d), "--pubkey", str(keys / "signing.pub"))
    assert r.returncode == 1 and r.stdout == "" and r.stderr.count("\n") == 1 and message in r.stderr


def test_a_manifest_signed_by_another_key_is_refused(payload, tmp_path) -> None:
    d, _, _ = payload
    manifest.keygen(tmp_path / "other")
    with pytest.raises(VerifyError, match="does not verify with the built-in public key"):
        manifest.verify_dir(d, manifest.public_key(tmp_path / "other" / "signing.pub"))


def test_streaming_check_stops_at_the_first_byte_too_many(payload) -> None:
    d, pub, _ = payload
    m = manifest.verify_dir(d, pub)
    art = m.get("vmlinuz")

    def endless():  # type: ignore[no-untyped-def]
        while True:
            yield b"k" * 4096
    with pytest.raises(VerifyError, match="longer than"):
        manifest.check_stream(art, endless())
    with pytest.raises(VerifyError, match="not in the signed manifest"):
        m.get("evil.img")


def test_parts_are_signed_by_hash_and_handed_on_as_sha256sum_lines(tmp_path) -> None:
    manifest.keygen(tmp_path / "k")
    d = tmp_path / "p"
    d.mkdir()
    (d / "vmlinuz").write_bytes(b"k")
    part = manifest.Artifact("kubernetes.squashfs", "part", 3, "ab" * 32)
    m = manifest.sign(d, tmp_path / "k" / "signing.key", [("vmlinuz", "kernel")], "", [part])
    assert m.by_role("part") == [part]
    # the part is inside the initramfs, not a file here: verify_dir does not look for it
    v = manifest.verify_dir(d, manifest.public_key(tmp_path / "k" / "signing.pub"))
    assert v.by_role("part") == [part]
    assert manifest.parts_check(v, "/usr/lib/k4s/parts") == \
        f"{'ab' * 32}  usr/lib/k4s/parts/kubernetes.squashfs\n".encode()


def test_mkimage_report_names_each_squashfs_part_with_its_hash() -> None:
    import json

    from k4s import mkimage

    segs = [mkimage.Segment("base", 3, 10, 5, False), mkimage.Segment("kubernetes", 1, 100, 40, True, "cd" * 32, 38)]
    doc = json.loads(mkimage.report_json(segs))
    assert doc["parts"] == [{"name": "kubernetes.squashfs", "size": 38, "sha256": "cd" * 32}]
    assert [s["part"] for s in doc["segments"]] == ["base", "kubernetes"]


# --- nothing old replays: serial, expiry, role; names ---------------------------------------------

def signed(d, keys, cmdline: str = "console=ttyS0", **kw):  # type: ignore[no-untyped-def]
    m = manifest.sign(d, keys / "signing.key", [("vmlinuz", "kernel"), ("initramfs.cpio.zst", "initrd")], cmdline, **kw)
    return manifest.parse((d / "manifest.json").read_bytes(), (d / "manifest.sig").read_bytes(),
                          manifest.public_key(keys / "signing.pub")), m


def test_a_manifest_carries_a_serial_an_expiry_and_its_node_role(payload) -> None:
    import time

    d, _, keys = payload
    got, made = signed(d, keys, "console=ttyS0 k4s.role=agent", serial=41, valid=3600)
    assert got == made and (got.serial, got.node_role) == (41, "agent")
    assert abs(got.expires - (time.time() + 3600)) < 60
    got.check_fresh(41, time.time(), "agent")
    default, _ = signed(d, keys)
    assert default.node_role == "server" and abs(default.serial - time.time()) < 60  # grows with every signing


@pytest.mark.parametrize("min_serial, later, role, message", [
    (42, 0, None, "serial 41 is below this stage 1's minimum 42"),
    (0, 7200, None, "manifest.json: expired at"),
    (0, 0, "server", "signed for a agent, and this machine is a server"),
])
def test_a_stale_or_misplaced_manifest_is_refused(payload, min_serial: int, later: int, role: str | None,
                                                  message: str) -> None:
    import time

    d, _, keys = payload
    got, _ = signed(d, keys, "k4s.role=agent", serial=41, valid=3600)
    with pytest.raises(VerifyError, match=message.replace("(", r"\(")):
        got.check_fresh(min_serial, time.time() + later, role)


@pytest.mark.parametrize("names, message", [
    (["vmlinuz", "vmlinuz"], "two artifacts are named 'vmlinuz'"),
    (["vmlinuz", "manifest.sig"], "artifact name 'manifest.sig' is reserved"),
    (["vmlinuz", "../x"], "is not a plain file name"),
])
def test_duplicate_and_reserved_names_are_refused(payload, names: list[str], message: str) -> None:
    from k4s.errors import K4sError

    d, _, keys = payload
    with pytest.raises(K4sError, match=message):
        manifest.sign(d, keys / "signing.key", [(names[0], "kernel"), *((n, "initrd") for n in names[1:])], "")


def test_a_signed_manifest_naming_an_artifact_twice_is_refused(payload) -> None:
    """Even when the key signed it (a signing mistake): stage 1 refuses it."""
    import base64
    import json

    from nacl.signing import SigningKey

    d, pub, keys = payload
    doc = json.loads((d / "manifest.json").read_bytes())
    doc["artifacts"].append(doc["artifacts"][1])
    raw = json.dumps(doc).encode()
    sk = SigningKey(base64.b64decode((keys / "signing.key").read_text().split()[1]))
    with pytest.raises(VerifyError, match="signed but two artifacts are named"):
        manifest.parse(raw, base64.b64encode(sk.sign(raw).signature), pub)


def test_stage1_reads_its_minimum_and_refuses_an_unset_clock(tmp_path, monkeypatch) -> None:
    from k4s.boot import stage1
    from k4s.errors import K4sError

    (tmp_path / "min").write_text("17\n")
    assert stage1.min_serial(tmp_path / "min") == 17 and stage1.min_serial(tmp_path / "none") == 0
    monkeypatch.setattr(stage1.time, "time", lambda: 86400.0)
    with pytest.raises(K4sError, match="the clock says 1970-01-02"):
        stage1.now()
