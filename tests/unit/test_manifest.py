"""Signed payload manifests: keygen, sign, verify, and every way a payload is refused."""

from __future__ import annotations

import stat

import pytest

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
    r = k4s_cmd("keygen", "--dir", str(tmp_path / "k"))
    assert r.returncode == 1 and "refusing to replace" in r.stderr and r.stderr.count("\n") == 1


def test_a_good_payload_verifies(payload) -> None:
    d, pub, keys = payload
    m = manifest.verify_dir(d, pub)
    assert [a.role for a in m.artifacts] == ["kernel", "initrd"] and "k4s.payload=" in m.cmdline
    r = k4s_cmd("verify", str(d), "--pubkey", str(keys / "signing.pub"))
    assert r.returncode == 0 and r.stdout.count("ok ") == 2


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

    from k4s.image import assemble

    segs = [assemble.Segment("base", 3, 10, 5, False), assemble.Segment("kubernetes", 1, 100, 40, True, "cd" * 32, 38)]
    doc = json.loads(assemble.report_json(segs))
    assert doc["parts"] == [{"name": "kubernetes.squashfs", "size": 38, "sha256": "cd" * 32}]
    assert [s["part"] for s in doc["segments"]] == ["base", "kubernetes"]
