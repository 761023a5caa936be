"""Parts into concatenated newc cpio segments, one per part, each compressed on its own and
cached by content (an unchanged part reuses its compressed segment); the size report."""

from __future__ import annotations

import hashlib
import json
import stat
from dataclasses import asdict, dataclass
from pathlib import Path

from k4s import layout
from k4s.fsutil import write_atomic
from k4s.image import cpio
from k4s.image.cpio import Tree


@dataclass
class Segment:
    part: str
    files: int
    unpacked: int
    compressed: int
    cached: bool
    squashfs_sha256: str = ""  # a squashfs part: the file's hash and size, for the signed manifest
    squashfs_size: int = 0


def pack(tree: Tree, method: str, level: int | None, cache: Path | None, squashed: dict[str, tuple[int, int, str]],
         progress: bool = True) -> tuple[bytes, list[Segment]]:
    """Every part of layout.PARTS that has entries, as one segment each, in order; the bytes to
    write and the segments. `squashed`: part -> (unpacked bytes, squashfs size, sha256) for the
    parts that became one squashfs file (compressed already: the kernel just copies it)."""
    segs: list[Segment] = []
    blobs: list[bytes] = []
    for part in layout.PARTS:
        entries = tree.segment(part)
        if not entries:
            continue
        raw = cpio.bytes_of(entries)
        seg_method = "none" if part in squashed else method
        key = hashlib.sha256(raw + f"{seg_method}:{level}".encode()).hexdigest()
        cached_path = cache / f"{key}.{seg_method}" if cache and seg_method != "none" else None
        if cached_path and cached_path.exists():
            blob, hit = cached_path.read_bytes(), True
        else:
            if progress and seg_method != "none":
                print(f"mkimage: compressing {part} ({len(raw) / 1e6:.1f} MB, {seg_method})", flush=True)
            blob, hit = cpio.compress(raw, seg_method, level), False
            if cached_path:
                write_atomic(cached_path, blob)
        # The kernel takes a plain cpio segment only at a 4-byte aligned offset,
        # and skips zero bytes between segments: pad every segment.
        blobs.append(blob + b"\0" * (-len(blob) % 4))
        files = sum(1 for e in entries if stat.S_ISREG(e.mode))
        unpacked, size, sha = squashed.get(part, (len(raw), 0, ""))
        segs.append(Segment(part, files, unpacked, len(blob), hit, sha, size))
    return b"".join(blobs), segs


def report_json(segs: list[Segment]) -> str:
    """The size table as data: what the bench reads (the text table is for people)."""
    parts = [{"name": layout.part_squashfs(s.part).name, "size": s.squashfs_size, "sha256": s.squashfs_sha256}
             for s in segs if s.squashfs_sha256]
    return json.dumps({"segments": [asdict(s) for s in segs], "parts": parts,
                       "total": {"files": sum(s.files for s in segs), "unpacked": sum(s.unpacked for s in segs),
                                 "compressed": sum(s.compressed for s in segs)}}, indent=1) + "\n"


def report(segs: list[Segment]) -> str:
    lines = [f"{'PART':<12} {'FILES':>6} {'UNPACKED':>10} {'COMPRESSED':>11}"]
    for s in segs:
        lines.append(f"{s.part:<12} {s.files:>6} {s.unpacked / 1e6:>8.1f}MB {s.compressed / 1e6:>9.1f}MB"
                     + ("  (cached)" if s.cached else ""))
    lines.append(f"{'total':<12} {sum(s.files for s in segs):>6} {sum(s.unpacked for s in segs) / 1e6:>8.1f}MB "
                 f"{sum(s.compressed for s in segs) / 1e6:>9.1f}MB")
    return "\n".join(lines)
