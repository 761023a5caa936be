"""A part as a squashfs file: kept compressed in RAM, mounted read-only by init; cached by content."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import tempfile
from pathlib import Path

from k4s import layout
from k4s.image import cpio
from k4s.image.cpio import Tree
from k4s.mkimage.host import run

# The unit squashfs decompresses: a page-cache miss of a binary costs one block, and fills
# the page cache with all of it. 1M packed 4% smaller, but in a 512 MiB machine, where the
# binaries' pages are dropped and read back, every miss decompressed 256 pages to use one.
SQUASHFS_BLOCK = "128K"
SQUASHFS_OPTIONS = ("-comp", "zstd", "-Xcompression-level", "19", "-b", SQUASHFS_BLOCK, "-all-root", "-no-xattrs",
                    "-mkfs-time", "0", "-all-time", "0")


def mksquashfs(entries: list[cpio.Entry], prefix: str, out: Path) -> None:
    """Pack the part's files (paths relative to prefix) into a reproducible zstd squashfs."""
    with tempfile.TemporaryDirectory(prefix="k4s-sq-") as tmp:
        stage = Path(tmp, "root")
        stage.mkdir()
        for e in entries:
            rel = e.name[len(prefix):].lstrip("/")
            if not rel:
                continue
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISDIR(e.mode):
                dst.mkdir(exist_ok=True)
            elif stat.S_ISLNK(e.mode):
                os.symlink(e.data.decode(), dst)
            elif e.source is not None:
                if _same_fs(e.source, dst.parent):
                    os.link(e.source, dst)  # no copy of 100+ MB binaries when the cache shares the fs
                else:
                    shutil.copyfile(e.source, dst)
                os.chmod(dst, stat.S_IMODE(e.mode))
        run(["mksquashfs", str(stage), str(out), "-noappend", "-quiet", *SQUASHFS_OPTIONS, "-processors", "2"])


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def squash_part(tree: Tree, part: str, cache: Path | None) -> tuple[int, Path]:
    """Replace a part's files by one squashfs file and symlinks into its mount point; unpacked
    bytes and the squashfs file."""
    entries = [e for e in tree.segment(part) if e.part == part and not stat.S_ISDIR(e.mode)]
    prefix = os.path.commonpath([os.path.dirname(e.name) for e in entries])
    unpacked = sum(e.length for e in entries)
    key = hashlib.sha256(cpio.bytes_of(entries) + " ".join(SQUASHFS_OPTIONS).encode()).hexdigest()
    out = (cache or Path(tempfile.gettempdir())) / f"{part}-{key}.squashfs"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        print(f"mkimage: mksquashfs {part} ({unpacked / 1e6:.1f} MB)", flush=True)
        tmp = out.with_suffix(".tmp")
        mksquashfs(entries, prefix, tmp)
        tmp.replace(out)
    # the part's directories below the prefix live in the squashfs too
    for name in [n for n, e in tree.entries.items()
                 if e.part == part and stat.S_ISDIR(e.mode) and n.startswith(prefix + "/")]:
        del tree.entries[name]
    for e in entries:
        del tree.entries[e.name]
        rel = e.name[len(prefix):].lstrip("/")
        top = rel.split("/")[0]
        link = f"{prefix}/{top}"
        if link not in tree.entries:
            tree.symlink(link, f"{layout.part_mount(part)}/{top}", part)
    tree.file(layout.member(layout.part_squashfs(part)), out, part, 0o444)
    tree.dir(layout.member(layout.part_mount(part)), part)
    return unpacked, out
