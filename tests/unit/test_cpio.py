"""newc cpio: deterministic writes; hostile or broken archives refused with one clear line."""

from __future__ import annotations

import os
import stat

import pytest

from k4s.errors import K4sError
from k4s.image import cpio
from tests.conftest import k4s_cmd, require


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


def test_a_symlink_then_a_file_of_the_same_name_writes_nothing_outside(tmp_path) -> None:
    # a symlink x -> /outside/file, then a regular member x: the second would write through the first
    outside = tmp_path / "outside"
    outside.write_text("mine")
    outside.chmod(0o600)
    evil = cpio.bytes_of([cpio.Entry("x", stat.S_IFLNK | 0o777, str(outside).encode()),
                          cpio.Entry("x", stat.S_IFREG | 0o777, b"pwned")])
    with pytest.raises(K4sError, match="appears twice"):
        cpio.extract(evil, tmp_path / "dest")
    assert outside.read_text() == "mine" and stat.S_IMODE(outside.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["outside"]


def test_a_hard_link_group_over_a_symlink_is_refused(tmp_path) -> None:
    outside = tmp_path / "outside"
    outside.write_text("mine")

    def member(name: bytes, mode: int, nlink: int, data: bytes) -> bytes:
        h = header(ino=9, mode=mode, nlink=nlink, size=len(data), namesize=len(name) + 1) + name + b"\0"
        return h + b"\0" * (-len(h) % 4) + data + b"\0" * (-len(data) % 4)
    raw = (cpio.bytes_of([cpio.Entry("l", stat.S_IFLNK | 0o777, str(outside).encode())])[:-124]
           + member(b"a", stat.S_IFREG | 0o644, 2, b"") + member(b"l", stat.S_IFREG | 0o644, 2, b"pwned")
           + cpio.bytes_of([]))
    with pytest.raises(K4sError, match="appears twice"):
        cpio.extract(raw, tmp_path / "dest")
    assert outside.read_text() == "mine" and not (tmp_path / "dest").exists()


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


# --- hostile archives: one line, non-zero, bounded time and memory, nothing half-written -------------

def header(**f: int) -> bytes:
    order = ("ino", "mode", "uid", "gid", "nlink", "mtime", "size", "dmaj", "dmin", "rmaj", "rmin", "namesize", "chk")
    return cpio.MAGIC + b"".join(b"%08X" % f.get(k, 0) for k in order)


def test_a_negative_size_is_refused_at_once(tmp_path) -> None:
    import time

    name = b"x\0"
    raw = cpio.MAGIC + b"00000001" + b"000081A4" + b"0" * 32 + b"-0000010" + b"0" * 32 + b"00000002" + b"0" * 8
    raw += name + b"\0" * (-(110 + len(name)) % 4)
    raw = raw.ljust(120, b"\0")
    assert len(raw) == 120
    bad = tmp_path / "neg.cpio"
    bad.write_bytes(raw)
    for args in (["-t", str(bad)], ["-x", str(bad), "-C", str(tmp_path / "out")]):
        t = time.monotonic()
        r = k4s_cmd("cpio", *args, timeout=30)
        assert time.monotonic() - t < 5  # the interpreter's start included; the reader itself is instant
        assert r.returncode == 1 and r.stderr.count("\n") == 1 and "8 hex digits" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("field", [b"+0000010", b" 0000010", b"0x000010", b"0000_010"])
def test_header_fields_are_exactly_eight_hex_digits(field) -> None:
    raw = cpio.bytes_of([cpio.Entry("f", stat.S_IFREG | 0o644, b"abc")])
    with pytest.raises(K4sError, match="8 hex digits"):
        list(cpio.read(raw[:54] + field + raw[62:]))  # the size field


def test_a_decompression_bomb_stops_at_the_cap(tmp_path) -> None:
    import subprocess
    import sys

    # a cpio of one 600 MiB file of zeros, streamed through zstd: a few KB on disk
    path = tmp_path / "bomb.cpio.zst"
    size = 600 << 20
    with open(path, "wb") as out:
        z = subprocess.Popen(["zstd", "-3", "-q", "-c"], stdin=subprocess.PIPE, stdout=out)
        assert z.stdin
        z.stdin.write(header(ino=1, mode=stat.S_IFREG | 0o644, nlink=1, size=size, namesize=2) + b"z\0")
        zeros = bytes(1 << 20)
        for _ in range(size >> 20):
            z.stdin.write(zeros)
        z.stdin.close()
        assert z.wait() == 0
    assert path.stat().st_size < 64 << 10
    code = (f"from k4s.image import cpio\ntry:\n list(cpio.read(open({str(path)!r},'rb').read()))\n"
            "except cpio.CpioError as e:\n print(e.message)\n"
            "print([ln.split()[1] for ln in open('/proc/self/status') if ln.startswith('VmHWM')][0])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    message, peak_kib = r.stdout.strip().splitlines()
    assert "expands past 64 MiB" in message and "bomb" in message, r.stdout + r.stderr
    assert int(peak_kib) < 300 << 10, peak_kib  # not the 600 MiB it would expand to


@pytest.mark.parametrize("members,message", [
    ([("d", stat.S_IFDIR | 0o755, b""), ("d", stat.S_IFREG | 0o644, b"x")], "a directory and a non-directory"),
    ([("f", stat.S_IFREG | 0o644, b"x"), ("f/child", stat.S_IFREG | 0o644, b"y")], "'f' is not a directory"),
    ([("dev/sda", stat.S_IFBLK | 0o600, b"")], "it is a block device"),
    ([("dev/null", stat.S_IFCHR | 0o666, b"")], "it is a character device"),
    ([("pipe", stat.S_IFIFO | 0o644, b"")], "it is a FIFO"),
])
def test_extract_refuses_with_one_line_and_writes_nothing(tmp_path, members, message) -> None:
    raw = cpio.bytes_of([cpio.Entry("first", stat.S_IFREG | 0o644, b"written before the bad one?")]
                        + [cpio.Entry(n, m, d) for n, m, d in members])
    path = tmp_path / "bad.cpio"
    path.write_bytes(raw)
    r = k4s_cmd("cpio", "-x", str(path), "-C", str(tmp_path / "out"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and message in r.stderr and "hint:" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.cpio"]  # no out/, no temporary directory


def test_a_nul_in_a_name_is_refused() -> None:
    raw = cpio.bytes_of([cpio.Entry("a\0b", stat.S_IFREG | 0o644, b"x")])
    with pytest.raises(K4sError, match="holds a NUL"):
        list(cpio.read(raw))


def test_hard_links_come_out_as_links(tmp_path) -> None:
    # as GNU cpio writes them: the same inode, nlink 2, the data with the last of the group
    def member(name: bytes, size: int, data: bytes) -> bytes:
        h = header(ino=7, mode=stat.S_IFREG | 0o644, nlink=2, size=size, namesize=len(name) + 1) + name + b"\0"
        return h + b"\0" * (-len(h) % 4) + data + b"\0" * (-len(data) % 4)
    trailer = cpio.bytes_of([])
    raw = member(b"a", 0, b"") + member(b"b", 5, b"hello") + trailer
    n = cpio.extract(raw, tmp_path / "out")
    a, b = tmp_path / "out" / "a", tmp_path / "out" / "b"
    assert n == 2 and a.read_bytes() == b.read_bytes() == b"hello"
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2


def test_extract_into_a_non_empty_directory_is_refused(tmp_path) -> None:
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep").write_text("mine")
    with pytest.raises(K4sError, match="not an empty directory"):
        cpio.extract(cpio.bytes_of(entries()[:2]), tmp_path / "out")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["keep"]


def test_an_unwritable_target_is_one_line_naming_the_entry(tmp_path) -> None:
    raw = cpio.bytes_of([cpio.Entry("etc", stat.S_IFDIR | 0o755), cpio.Entry("etc/f", stat.S_IFREG | 0o644, b"x")])
    full = tmp_path / "full"
    full.mkdir()
    import subprocess
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4k,nr_inodes=3", "tmpfs", str(full)], check=False)
    try:
        require(os.path.ismount(full), "root, to mount a tiny tmpfs", "run the tests as root")
        with pytest.raises(K4sError) as e:
            cpio.extract(raw, full / "out")
        assert "cannot extract" in e.value.message and "\n" not in e.value.render()
        assert list(full.iterdir()) == []
    finally:
        subprocess.run(["umount", str(full)], check=False)


# --- fuzzing the reader: any mutation of a valid archive is read or refused in one line, quickly -----

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SEED = cpio.bytes_of(entries() + [cpio.Entry("etc/big", stat.S_IFREG | 0o600, bytes(range(256)) * 4)])
SEED_ZST = cpio.compress(SEED, "zstd", 3)


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([SEED, SEED_ZST]),
       st.lists(st.tuples(st.integers(0, len(SEED) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(0, len(SEED)))
def test_fuzz_mutated_archives_are_read_or_refused_in_one_line(base, flips, cut) -> None:
    raw = bytearray(base)
    for pos, value in flips:
        raw[pos % len(raw)] = value
    raw = bytes(raw[:max(1, cut % (len(raw) + 1))])
    try:
        for m in cpio.read(raw):
            assert isinstance(m.name, str) and len(m.data) == m.size
    except K4sError as e:
        assert "\n" not in e.render() and e.hint


@settings(max_examples=100, deadline=2000)
@given(st.binary(min_size=0, max_size=400))
def test_fuzz_random_bytes_after_a_magic(tail) -> None:
    try:
        list(cpio.read(cpio.MAGIC + tail))
    except K4sError as e:
        assert "\n" not in e.render()


def test_a_hard_link_under_a_later_symlink_is_refused(tmp_path) -> None:
    """Hard links are made last: `d/f` (nlink 2), then `d` a symlink out, then the data `g`
    would link through `d`. The implied directory `d` makes the symlink a second kind of `d`."""
    outside = tmp_path / "outside"
    outside.mkdir()

    def member(name: bytes, mode: int, nlink: int, data: bytes, ino: int) -> bytes:
        h = header(ino=ino, mode=mode, nlink=nlink, size=len(data), namesize=len(name) + 1) + name + b"\0"
        return h + b"\0" * (-len(h) % 4) + data + b"\0" * (-len(data) % 4)
    raw = (member(b"d/f", stat.S_IFREG | 0o644, 2, b"", 5)
           + member(b"d", stat.S_IFLNK | 0o777, 1, str(outside).encode(), 6)
           + member(b"g", stat.S_IFREG | 0o644, 2, b"pwned", 5) + cpio.bytes_of([]))
    with pytest.raises(K4sError, match="a directory and a non-directory have this name"):
        cpio.extract(raw, tmp_path / "dest")
    assert list(outside.iterdir()) == [] and not (tmp_path / "dest").exists()
