"""newc cpio: deterministic writes; hostile or broken archives refused with one clear line."""

from __future__ import annotations

import stat

import pytest

from k4s.errors import K4sError
from k4s.image import cpio
from tests.conftest import k4s_cmd


def entries() -> list[cpio.Entry]:
    return [cpio.Entry("etc", stat.S_IFDIR | 0o755), cpio.Entry("etc/hello", stat.S_IFREG | 0o644, b"hi\n"),
            cpio.Entry("etc/link", stat.S_IFLNK | 0o777, b"hello"),
            cpio.Entry("dev/null", stat.S_IFCHR | 0o666, rdev=(1, 3))]


def test_header_layout_and_trailer() -> None:
    raw = cpio.bytes_of(entries())
    assert raw[:6] == b"070701"
    assert b"TRAILER!!!" in raw
    assert len(raw) % 4 == 0
    members = list(cpio.read(raw))
    assert [m.name for m in members] == ["etc", "etc/hello", "etc/link", "dev/null"]
    assert members[1].data == b"hi\n" and members[1].uid == 0 and members[1].mtime == 0
    assert members[3].rdev == (1, 3)


def test_deterministic_and_epoch(monkeypatch) -> None:
    assert cpio.bytes_of(entries()) == cpio.bytes_of(entries())
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    assert next(iter(cpio.read(cpio.bytes_of(entries())))).mtime == 1700000000


@pytest.mark.parametrize("method", ["gzip", "xz", "zstd", "none"])
def test_concatenated_compressed_segments(method) -> None:
    a = cpio.compress(cpio.bytes_of(entries()[:2]), method)
    b = cpio.compress(cpio.bytes_of([cpio.Entry("usr", stat.S_IFDIR | 0o755)]), method)
    plain = cpio.bytes_of([cpio.Entry("seed", stat.S_IFREG | 0o600, b"s")])
    pad = b"\0" * (-len(a) % 4)
    names = [m.name for m in cpio.read(a + pad + b + b"\0" * (-len(b) % 4) + plain)]
    assert names == ["etc", "etc/hello", "usr", "seed"]


def test_xz_uses_crc32_for_the_kernel() -> None:
    blob = cpio.compress(b"x" * 100, "xz")
    assert blob[6:8] == b"\x00\x01"  # stream flags: check type 1 = CRC32


def test_extract_refuses_traversal(tmp_path) -> None:
    evil = cpio.bytes_of([cpio.Entry("../escape", stat.S_IFREG | 0o644, b"x")])
    with pytest.raises(K4sError, match="escapes the target"):
        cpio.extract(evil, tmp_path / "dest")
    assert not (tmp_path / "escape").exists()


def test_extract_refuses_write_through_symlink(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    evil = cpio.bytes_of([cpio.Entry("d", stat.S_IFLNK | 0o777, str(outside).encode()),
                          cpio.Entry("d/pwned", stat.S_IFREG | 0o644, b"x")])
    with pytest.raises(K4sError, match="symlink"):
        cpio.extract(evil, tmp_path / "dest")
    assert not (outside / "pwned").exists()


@pytest.mark.parametrize("mangle,message", [
    (lambda r: r[:50], "truncated header"),
    (lambda r: b"XXXXXX" + r[6:], "unknown data at byte 0"),
    (lambda r: r[:6] + b"ZZZZZZZZ" + r[14:], "non-hex header"),
    (lambda r: r[:200], "runs past the end"),
])
def test_corrupt_archives(mangle, message) -> None:
    raw = cpio.bytes_of([cpio.Entry("big", stat.S_IFREG | 0o644, b"y" * 500)])
    with pytest.raises(K4sError, match=message):
        list(cpio.read(mangle(raw)))


def test_cpio_applet_lists_and_rejects(tmp_path) -> None:
    good = tmp_path / "good.cpio"
    good.write_bytes(cpio.bytes_of(entries()))
    r = k4s_cmd("cpio", "-t", str(good), check=True)
    assert "etc/link -> hello" in r.stdout
    bad = tmp_path / "bad.cpio"
    bad.write_bytes(cpio.bytes_of([cpio.Entry("/abs/path", stat.S_IFREG | 0o644, b"x")]))
    r = k4s_cmd("cpio", "-x", str(bad), "-C", str(tmp_path / "out"))
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and "escapes the target" in r.stderr and "hint:" in r.stderr
    assert not (tmp_path / "out" / "abs").exists()
