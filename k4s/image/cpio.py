"""newc cpio: an in-memory tree, a deterministic writer and a defensive reader.

Writer: entries in the order given (the image builder sorts them), inodes
renumbered from 1, uid/gid 0, mtime fixed (SOURCE_DATE_EPOCH), nlink 1 (2 for
directories), 4-byte alignment, "TRAILER!!!" at the end.

Reader: walks concatenated archives (the kernel accepts several segments, each
compressed on its own), decompressing zstd, xz and gzip by their magic. It
rejects what could hurt an extractor: absolute or `..` paths, writes through
symlinks, a name seen twice, truncated or oversized headers. Files are created
exclusively and never opened through a link.
"""

from __future__ import annotations

import gzip
import io
import lzma
import os
import re
import stat
import subprocess
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from k4s.errors import K4sError

MAGIC = b"070701"
HEADER = 110
TRAILER = "TRAILER!!!"
MAX_NAME = 4096
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
XZ_MAGIC = b"\xfd7zXZ\x00"
GZIP_MAGIC = b"\x1f\x8b"


@dataclass
class Entry:
    name: str               # relative path, no leading slash
    mode: int               # full st_mode (type | permissions)
    data: bytes = b""       # file contents or symlink target (when source is None)
    source: Path | None = None  # a host file to stream instead of data
    size: int = 0           # for source
    rdev: tuple[int, int] = (0, 0)
    part: str = ""          # which part of the image (for size reports)

    @property
    def length(self) -> int:
        return self.size if self.source is not None else len(self.data)


def _header(ino: int, e: Entry, mtime: int, namesize: int) -> bytes:
    nlink = 2 if stat.S_ISDIR(e.mode) else 1
    fields = (ino, e.mode, 0, 0, nlink, mtime, e.length, 0, 0, e.rdev[0], e.rdev[1], namesize, 0)
    return MAGIC + b"".join(b"%08X" % f for f in fields)


def _pad(n: int) -> bytes:
    return b"\0" * ((4 - n % 4) % 4)


def write(out: BinaryIO, entries: list[Entry], mtime: int | None = None) -> int:
    """Write entries (in order) and the trailer; bytes written."""
    mt = int(os.environ.get("SOURCE_DATE_EPOCH", "0")) if mtime is None else mtime
    total = 0
    for ino, e in enumerate([*entries, Entry(TRAILER, 0)], 1):
        name = e.name.encode() + b"\0"
        hdr = _header(ino if e.name != TRAILER else 0, e, mt, len(name))
        chunk = hdr + name + _pad(HEADER + len(name))
        out.write(chunk)
        total += len(chunk)
        if e.source is not None:
            with open(e.source, "rb") as f:
                copied = 0
                while block := f.read(1 << 20):
                    out.write(block)
                    copied += len(block)
            if copied != e.size:
                raise K4sError(f"{e.source} changed size while packing", hint="rebuild the image")
        else:
            out.write(e.data)
        out.write(_pad(e.length))
        total += e.length + len(_pad(e.length))
    return total


@dataclass
class Tree:
    """An archive being built, in memory: member name -> Entry, each tagged with the part
    (segment) it belongs to. `merged` maps top directories that are symlinks in the
    archive (merged /usr: bin -> usr/bin) so that every path lands in its real place."""

    entries: dict[str, Entry] = field(default_factory=dict)
    merged: dict[str, str] = field(default_factory=dict)

    def norm(self, path: str) -> str:
        p = path.strip("/")
        head, _, rest = p.partition("/")
        if head in self.merged and rest:
            p = f"{self.merged[head]}/{rest}"
        return p

    def _parents(self, path: str, part: str) -> None:
        parts = path.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            d = "/".join(parts[:i])
            if d not in self.entries:
                self.entries[d] = Entry(d, stat.S_IFDIR | 0o755, part=part)

    def add(self, e: Entry) -> None:
        e.name = self.norm(e.name)
        if not e.name:
            return  # the root itself: the kernel's rootfs already exists
        self._parents(e.name, e.part)
        self.entries[e.name] = e

    def dir(self, path: str, part: str, mode: int = 0o755) -> None:
        self.add(Entry(path, stat.S_IFDIR | mode, part=part))

    def file(self, path: str, source: Path, part: str, mode: int | None = None) -> None:
        st = source.stat()
        self.add(Entry(path, stat.S_IFREG | (mode if mode is not None else stat.S_IMODE(st.st_mode)),
                            source=source, size=st.st_size, part=part))

    def data(self, path: str, data: bytes, part: str, mode: int = 0o644) -> None:
        self.add(Entry(path, stat.S_IFREG | mode, data=data, part=part))

    def symlink(self, path: str, target: str, part: str) -> None:
        self.add(Entry(path, stat.S_IFLNK | 0o777, data=target.encode(), part=part))

    def dev(self, path: str, major: int, minor: int, mode: int, part: str = "base") -> None:
        self.add(Entry(path, stat.S_IFCHR | mode, rdev=(major, minor), part=part))

    def tree(self, src: Path, dst: str, part: str) -> None:
        """Copy a host directory, keeping symlinks as symlinks."""
        for root, dirs, files in os.walk(src):
            dirs.sort()
            rel = os.path.relpath(root, src)
            base = dst if rel == "." else f"{dst}/{rel}"
            self.dir(base, part, stat.S_IMODE(os.stat(root).st_mode))
            for name in sorted(files) + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
                p = Path(root, name)
                if p.is_symlink():
                    self.symlink(f"{base}/{name}", os.readlink(p), part)
                else:
                    self.file(f"{base}/{name}", p, part)

    def segment(self, part: str) -> list[Entry]:
        """The part's entries, sorted, with every parent directory it needs."""
        names = {n for n, e in self.entries.items() if e.part == part}
        for n in list(names):
            bits = n.split("/")[:-1]
            names.update("/".join(bits[:i]) for i in range(1, len(bits) + 1))
        return [self.entries[n] for n in sorted(names)]



# --- reading -----------------------------------------------------------------------------
#
# The reader takes hostile input: a served payload, an archive from anywhere. Every header
# field must be exactly 8 hex digits; every size is bounded by what is left of the input;
# decompression stops at a cap (a few KB of zstd can expand to gigabytes); extraction is
# all-or-nothing. Every refusal is one line naming the entry or the byte offset.

HEX8 = re.compile(rb"[0-9A-Fa-f]{8}")
MIN_UNPACKED_CAP = 64 << 20     # whatever the ratio, this much may always be unpacked
UNPACKED_RATIO_CAP = 32         # an initramfs unpacks to ~4x; a decompression bomb to 1000x+
CHUNK = 1 << 20


@dataclass
class Member:
    name: str
    mode: int
    size: int
    mtime: int
    uid: int
    gid: int
    rdev: tuple[int, int]
    data: bytes
    ino: tuple[int, int, int] = (0, 0, 0)  # (dev major, dev minor, inode): hard links share it
    nlink: int = 1


class CpioError(K4sError):
    def __init__(self, message: str) -> None:
        super().__init__(message, hint="the archive is corrupt or not a newc cpio (make image rebuilds it)")


def unpacked_cap(compressed: int) -> int:
    return max(MIN_UNPACKED_CAP, UNPACKED_RATIO_CAP * compressed)


class _Sink:
    """Decompressed bytes, refusing to grow past the cap."""

    def __init__(self, cap: int) -> None:
        self.buf, self.cap = bytearray(), cap

    def add(self, data: bytes, what: str) -> None:
        if len(self.buf) + len(data) > self.cap:
            raise CpioError(f"{what} expands past {self.cap >> 20} MiB, more than an archive of this size may "
                            "(a decompression bomb?)")
        self.buf += data


def _unzstd(data: bytes, out: _Sink, pos: int) -> None:
    import threading

    proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    assert proc.stdin and proc.stdout and proc.stderr

    def feed() -> None:
        try:
            proc.stdin.write(data)  # type: ignore[union-attr]
            proc.stdin.close()  # type: ignore[union-attr]
        except OSError:
            pass  # zstd stopped reading: it failed, or we killed it at the cap

    t = threading.Thread(target=feed, daemon=True)
    t.start()
    try:
        while chunk := proc.stdout.read(CHUNK):
            out.add(chunk, f"zstd data at byte {pos}")
    except CpioError:
        proc.kill()
        raise
    finally:
        t.join(5)
        err = proc.stderr.read().decode(errors="replace").strip()
        proc.wait()
    if proc.returncode != 0:
        raise CpioError(f"zstd data at byte {pos}: {err.splitlines()[-1] if err else 'corrupt'}")


def decompress(raw: bytes, cap: int | None = None) -> bytes:
    """Undo zstd/xz/gzip on each concatenated segment; plain cpio passes through. At most
    `cap` bytes come out (default: unpacked_cap of the input's size)."""
    out = _Sink(unpacked_cap(len(raw)) if cap is None else cap)
    pos = 0
    while pos < len(raw):
        while pos < len(raw) and raw[pos] == 0:  # padding between segments
            pos += 1
        if pos >= len(raw):
            break
        head = raw[pos:pos + 6]
        if head.startswith(ZSTD_MAGIC):
            end = pos
            while raw[end:end + 4] == ZSTD_MAGIC:  # consecutive frames: one zstd run
                end = zstd_frame_end(raw, end)
            _unzstd(raw[pos:end], out, pos)
            pos = end
            continue
        if head.startswith(XZ_MAGIC) or head.startswith(GZIP_MAGIC):
            xz = head.startswith(XZ_MAGIC)
            d: Any = lzma.LZMADecompressor() if xz else zlib.decompressobj(31)
            what = f"{'xz' if xz else 'gzip'} data at byte {pos}"
            try:
                data = raw[pos:]
                while not d.eof:  # CHUNK bytes of output at a time, each counted against the cap
                    out.add(d.decompress(data, CHUNK), what)
                    # zlib hands back what it has not read yet; lzma keeps it and says if it needs more
                    data = getattr(d, "unconsumed_tail", b"")
                    if not data and not d.eof and getattr(d, "needs_input", True):
                        raise CpioError(f"{what} is truncated")
                pos = len(raw) - len(d.unused_data)
            except (lzma.LZMAError, zlib.error) as e:
                raise CpioError(f"{what}: {e}") from None
            continue
        if head == MAGIC:
            end = _plain_end(raw, pos)
            out.add(raw[pos:end], f"archive at byte {pos}")
            pos = end
            continue
        raise CpioError(f"unknown data at byte {pos}: {head!r}")
    return bytes(out.buf)


def zstd_frame_end(raw: bytes, pos: int) -> int:
    """Where the zstd frame at pos ends (RFC 8878 section 3.1.1), so a plain segment may follow it."""
    try:
        p = pos + 4
        fhd = raw[p]
        p += 1
        single = (fhd >> 5) & 1
        p += 0 if single else 1                     # window descriptor
        p += (0, 1, 2, 4)[fhd & 3]                  # dictionary id
        p += ((1 if single else 0), 2, 4, 8)[fhd >> 6]  # frame content size
        while True:
            hdr = raw[p] | raw[p + 1] << 8 | raw[p + 2] << 16
            p += 3
            btype, bsize = (hdr >> 1) & 3, hdr >> 3
            if btype == 3:
                raise CpioError(f"zstd: reserved block type at byte {p - 3}")
            p += 1 if btype == 1 else bsize
            if hdr & 1:
                break
        if (fhd >> 2) & 1:
            p += 4                                  # content checksum
    except IndexError:
        raise CpioError(f"zstd: frame at byte {pos} is truncated") from None
    if p > len(raw):
        raise CpioError(f"zstd: frame at byte {pos} is truncated")
    return p


def _plain_end(raw: bytes, pos: int) -> int:
    """Where an uncompressed archive that starts at pos ends (after its trailer)."""
    for m, end in _walk(raw, pos):
        if m.name == TRAILER:
            return end
    return len(raw)


def _walk(raw: bytes, pos: int) -> Iterator[tuple[Member, int]]:
    while pos < len(raw):
        if len(raw) - pos < HEADER:
            raise CpioError(f"truncated header at byte {pos}")
        if raw[pos:pos + 6] != MAGIC:
            raise CpioError(f"bad magic at byte {pos}: {raw[pos:pos + 6]!r}")
        fields = [raw[pos + 6 + 8 * i: pos + 14 + 8 * i] for i in range(13)]
        if not all(HEX8.fullmatch(f) for f in fields):
            raise CpioError(f"non-hex header field at byte {pos}: each must be 8 hex digits")
        ino, mode, uid, gid, nlink, mtime, size, dmaj, dmin, rmaj, rmin, namesize, _ = (int(f, 16) for f in fields)
        name_start = pos + HEADER
        if namesize == 0 or namesize > MAX_NAME or name_start + namesize > len(raw):
            raise CpioError(f"bad name size {namesize} at byte {pos}")
        raw_name = raw[name_start:name_start + namesize]
        if raw_name[-1:] != b"\0" or b"\0" in raw_name[:-1]:
            raise CpioError(f"name at byte {pos} is not NUL-terminated or holds a NUL")
        name = raw_name[:-1].decode("utf-8", errors="replace")
        data_start = name_start + namesize + len(_pad(HEADER + namesize))
        if size > len(raw) - data_start:
            raise CpioError(f"{name!r}: data runs past the end of the archive")
        data = raw[data_start:data_start + size]
        end = data_start + size + len(_pad(size))
        yield Member(name, mode, size, mtime, uid, gid, (rmaj, rmin), data, (dmaj, dmin, ino), nlink), end
        pos = end
        if name == TRAILER:
            # the next segment may start after zero padding
            while pos < len(raw) and raw[pos] == 0:
                pos += 1


def read(raw: bytes, cap: int | None = None) -> Iterator[Member]:
    """Every member of every concatenated (possibly compressed) archive, trailers skipped."""
    for m, _ in _walk(decompress(raw, cap), 0):
        if m.name != TRAILER:
            yield m


def safe_relpath(name: str) -> str:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if name.startswith("/") or any(p == ".." for p in parts):
        raise K4sError(f"refusing path {name!r}: it escapes the target directory",
                       hint="the archive is hostile or broken; do not extract it")
    return "/".join(parts)


def _refuse(name: str, why: str) -> K4sError:
    return K4sError(f"refusing {name!r}: {why}", hint="the archive is hostile or broken; do not extract it")


def plan(members: list[Member], devices: bool = False) -> list[tuple[str, Member, str | None]]:
    """Check every member before anything is written: (path, member, hard-link target or None).
    Paths stay inside; no entry goes through or over an entry of another kind; hard links
    (same inode, nlink > 1) point at the member that carries the data."""
    kinds: dict[str, int] = {}
    out: list[tuple[str, Member, str | None]] = []
    links: dict[tuple[int, int, int], list[int]] = {}
    for m in members:
        rel = safe_relpath(m.name)
        if not rel:
            continue
        kind = stat.S_IFMT(m.mode)
        if kind not in (stat.S_IFDIR, stat.S_IFREG, stat.S_IFLNK):
            what = {stat.S_IFCHR: "a character device", stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO",
                    stat.S_IFSOCK: "a socket"}.get(kind, f"of unknown type {kind:o}")
            if not devices or kind not in (stat.S_IFCHR, stat.S_IFBLK, stat.S_IFIFO):
                raise _refuse(m.name, f"it is {what} (pass --devices, as root, to create device nodes)")
        parts = rel.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            pk = kinds.setdefault(parent, stat.S_IFDIR)  # implied: a later entry of another kind is refused
            if pk == stat.S_IFLNK:
                raise _refuse(m.name, f"{parent!r} is a symlink in this archive: a write through it could "
                                      "land anywhere")
            if pk != stat.S_IFDIR:
                raise _refuse(m.name, f"{parent!r} is not a directory in this archive")
        if rel in kinds and (kinds[rel] == stat.S_IFDIR) != (kind == stat.S_IFDIR):
            raise _refuse(m.name, "a directory and a non-directory have this name")
        if rel in kinds and kind != stat.S_IFDIR:  # the second write would go through the first (a symlink)
            raise _refuse(m.name, "the name appears twice in this archive")
        kinds[rel] = kind
        if kind == stat.S_IFREG and m.nlink > 1:
            links.setdefault(m.ino, []).append(len(out))
        out.append((rel, m, None))
    for group in links.values():  # newc stores a hard link's data once, with the last of the group
        owner = next((i for i in reversed(group) if out[i][1].size), group[-1])
        for i in group:
            if i != owner:
                out[i] = (out[i][0], out[i][1], out[owner][0])
    # the hard links after everything else, so the file they name exists
    return [x for x in out if x[2] is None] + [x for x in out if x[2] is not None]


def extract(raw: bytes, dest: Path, devices: bool = False, cap: int | None = None) -> int:
    """Extract into dest, which must be missing or empty: everything is written into a
    temporary directory beside it and renamed into place only when every entry was
    accepted and written. No writes through symlinks (the tree is new, and every path is
    checked before), no device nodes unless asked (as root). Number of entries."""
    import shutil
    import tempfile

    dest = Path(os.path.abspath(dest))
    members = list(read(raw, cap))  # validate the whole archive before writing anything
    todo = plan(members, devices)
    if dest.is_symlink() or (dest.exists() and (not dest.is_dir() or any(dest.iterdir()))):
        raise K4sError(f"{dest} exists and is not an empty directory", hint="extract into a new directory")
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    except OSError as e:
        raise K4sError(f"cannot extract into {dest}: {e.strerror}", hint="choose a writable directory") from e
    name = ""
    try:
        dirs: list[tuple[Path, int]] = []
        for rel, m, link_to in todo:
            name, target = m.name, tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            kind = stat.S_IFMT(m.mode)
            if kind == stat.S_IFDIR:
                target.mkdir(exist_ok=True)
                dirs.append((target, stat.S_IMODE(m.mode)))
            elif kind == stat.S_IFLNK:
                os.symlink(m.data.decode("utf-8", errors="surrogateescape"), target)
            elif link_to is not None:
                os.link(tmp / link_to, target)
            elif kind == stat.S_IFREG:  # created here, never opened through a link
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as f:
                    f.write(m.data)
                    os.fchmod(f.fileno(), stat.S_IMODE(m.mode) & 0o777)
            else:
                os.mknod(target, m.mode, os.makedev(*m.rdev))
        for d, mode in reversed(dirs):  # after their contents: a 0555 directory was still writable
            os.chmod(d, mode)
        if dest.exists():
            dest.rmdir()  # empty, checked above
        os.rename(tmp, dest)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise K4sError(f"cannot extract {name!r}: {e.strerror}", hint="check the target's space and permissions") \
            from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return len(todo)


def bytes_of(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    write(buf, entries)
    return buf.getvalue()


def compress(data: bytes, method: str, level: int | None = None) -> bytes:
    if method == "none":
        return data
    if method == "gzip":
        return gzip.compress(data, compresslevel=level or 9, mtime=0)
    if method == "xz":
        # The kernel's xz decoder takes CRC32 (or no) checks only.
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32,
                             filters=[{"id": lzma.FILTER_X86}, {"id": lzma.FILTER_LZMA2, "preset": level or 9}])
    if method == "zstd":
        r = subprocess.run(["zstd", f"-{level or 19}", "-T2", "-q", "-c"], input=data, capture_output=True)
        if r.returncode != 0:
            raise K4sError(f"zstd failed: {r.stderr.decode(errors='replace').strip()}", hint="apt-get install zstd")
        return r.stdout
    raise K4sError(f"unknown compression {method!r}", hint="use zstd, xz, gzip or none")
