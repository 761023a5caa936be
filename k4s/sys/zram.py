"""Compressed swap in RAM (zram) for the node's own processes.

A machine with no disk has nowhere to page out to, yet much of what the node's
processes hold is cold after start-up: the garbage a Go heap keeps until its next
collection, Python's import-time objects, rarely read API models. Under memory
pressure the kernel's only other choice is to drop the page cache of the binaries,
which under squashfs means decompressing them again, block by block, on the next
instruction fetch: in a 512 MiB machine that thrashed until the apiserver missed its
readiness deadline. zram turns cold anonymous pages into compressed ones (about 3:1)
instead, the way Fedora, ChromeOS and Android run.

Pods never swap: the kubelet's default swap behaviour, NoSwap (swap support is GA
since Kubernetes 1.34; `failSwapOn: false`), sets memory.swap.max to 0 for every
container, so a pod that allocates without limit still meets the OOM killer, and the
OOM fence (k4s.cluster.protect) is unchanged. The device is sized as a share of RAM
(`zram`, the uncompressed amount it may take in); it costs nothing until the kernel
reclaims memory.
"""

from __future__ import annotations

import os
import re
import struct
from pathlib import Path

from k4s.errors import K4sError
from k4s.sys import libc

DEVICE = "zram0"
PRIORITY = 100
SWAP_MAGIC = b"SWAPSPACE2"
# Prefer swapping anonymous memory to dropping the binaries' page cache: reading a page
# back from zram is one small decompression, from squashfs a whole block (the kernel's
# swappiness documentation: above 100 when swap is cheaper than the filesystem). In a
# 512 MiB machine 180 reached Ready in 142 s where 100 took 171. Read back one page at a
# time: zram has no seek cost for read-ahead to hide.
SYSCTLS = {"vm/swappiness": "180", "vm/page-cluster": "0"}


def swap_header(size: int, page: int) -> bytes:
    """The first page of a swap area, what mkswap writes: version 1, the index of the
    last page, no bad pages, no UUID or label, the signature at the page's end."""
    header = bytearray(page)
    struct.pack_into("<III", header, 1024, 1, size // page - 1, 0)
    header[page - len(SWAP_MAGIC):] = SWAP_MAGIC
    return bytes(header)


def in_use(shown: str) -> str:
    """The compression zram uses, from its comp_algorithm: "lzo [lzo-rle] lz4 zstd"."""
    return m.group(1) if (m := re.search(r"\[([^]]+)\]", shown)) else shown.strip()


def setup(percent: int, mem_total_kib: int, algorithm: str = "zstd", sys: Path = Path("/sys"),
          dev: Path = Path("/dev"), proc: Path = Path("/proc")) -> tuple[int, str]:
    """Size the zram device to `percent` of RAM and swap on it; its size in bytes (0: off)
    and the compression it uses: `algorithm`, or the kernel's default when it has not
    got that one."""
    if percent == 0:
        return 0, ""
    block = sys / "block" / DEVICE
    if not block.is_dir():
        raise K4sError(f"no {block}", hint="the kernel needs the zram module (etc/k4s/modules.list) or k4s.zram=0")
    page = os.sysconf("SC_PAGE_SIZE")
    size = mem_total_kib * 1024 * percent // 100 // page * page
    if size < 16 * page:
        raise K4sError(f"a zram swap of {size} bytes is too small", hint="raise k4s.zram or set it to 0")
    try:
        try:  # before disksize: the algorithm is fixed once the device has a size
            (block / "comp_algorithm").write_text(algorithm)
        except OSError:
            pass
        used = in_use((block / "comp_algorithm").read_text())
        (block / "disksize").write_text(str(size))
        with open(dev / DEVICE, "r+b", buffering=0) as f:
            f.write(swap_header(size, page))
            os.fsync(f.fileno())
        libc.swapon(str(dev / DEVICE), PRIORITY)
        for key, value in SYSCTLS.items():
            (proc / "sys" / key).write_text(value)
    except OSError as e:
        raise K4sError(f"zram swap on /dev/{DEVICE}: {e.strerror or e}",
                       hint="a kernel with CONFIG_ZRAM and CONFIG_SWAP, or k4s.zram=0") from e
    return size, used


def ram_used(sys: Path = Path("/sys")) -> int:
    """Bytes of RAM the compressed pages take now (mm_stat's mem_used_total); 0 without zram."""
    try:
        return int((sys / "block" / DEVICE / "mm_stat").read_text().split()[2])
    except (OSError, ValueError, IndexError):
        return 0
