"""/proc/meminfo and /proc/vmstat, read as numbers."""

from __future__ import annotations

from pathlib import Path


def meminfo(text: str | None = None) -> dict[str, int]:
    """/proc/meminfo as {field: KiB}."""
    if text is None:
        text = Path("/proc/meminfo").read_text()
    out = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if value := rest.split():
            out[key] = int(value[0])
    return out


def paging(text: str | None = None) -> dict[str, int]:
    """Pages read back since boot: from swap (zram), and of files whose page cache was dropped
    (refaults: the binaries, read back from squashfs). Both climbing fast is thrashing."""
    try:
        if text is None:
            text = Path("/proc/vmstat").read_text()
        counts = dict(line.split() for line in text.splitlines())
        return {"swapins": int(counts.get("pswpin", 0)), "refaults": int(counts.get("workingset_refault_file", 0))}
    except (OSError, ValueError):
        return {}
