"""What every bench section shares: where things are, running commands, one appliance boot."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
BENCH = OUT / "bench"
BIN = OUT / "components" / "bin"
CACHE = Path(os.environ.get("K4S_CACHE", "/var/cache/k4s"))
KERNEL, INITRD, STAGE1 = OUT / "vmlinuz", OUT / "initramfs.cpio.zst", OUT / "stage1.cpio.xz"
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


def sh(*args: str, **kw) -> str:  # type: ignore[no-untyped-def]
    return subprocess.run(args, check=True, capture_output=True, text=True, **kw).stdout


def timed_runs(argv: list[str], n: int) -> list[float]:
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
        out.append(time.perf_counter() - t)
    return out


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def mem_fields(stats: dict) -> dict[str, int]:
    """A stats event's memory fields (mem_used_mib, anon_mib, shmem_mib, kernel_mib...)."""
    return {k: int(v) for k, v in stats.items() if k.endswith("_mib")}


def mem_detail(m: dict) -> str:
    """ (anon 292, shmem 110, kernel 21 MiB): the parts of a stats line's memory."""
    parts = [f"{k.removesuffix('_mib')} {v}" for k, v in m.items() if k not in ("mem_used_mib", "mem_total_mib")]
    return f" ({', '.join(parts)} MiB)" if parts else ""


def spans(got: list[dict]) -> dict[str, dict[str, float]]:
    """Each service of the node's graph: when it started and when it was first ready (seconds
    since kernel start, from its events)."""
    from k4s.cluster import services

    names = {n for n, _ in services.GRAPH}
    out: dict[str, dict[str, float]] = {}
    for e in got:
        if e.get("component") in names and e.get("event") in ("start", "ready"):
            out.setdefault(e["component"], {}).setdefault(e["event"], e["t"])
    return out


def boot(memory: int, wait_idle: float = 0, append: str = "", disk: Path | None = None,
         initrd: Path = INITRD, until_coredns: bool = False) -> dict:
    """One appliance boot to Ready (k4s.host.vm, with its lockup retry): the wall clock, the
    timeline of the boot's critical path (k4s.events.TIMELINE), memory at idle after wait_idle
    seconds; {"ready": False, "error": ...} when it does not get there."""
    from k4s import events, log
    from k4s.errors import K4sError
    from k4s.host.vm import VM

    vm = VM(Path(tempfile.mkdtemp()), KERNEL, initrd, memory=memory, port=16543, append=append, disk=disk)
    t0 = time.monotonic()
    result: dict = {"memory_mib": memory}
    try:
        with vm.booted(timeout=600):
            result["ready_wall_s"] = round(time.monotonic() - t0, 1)
            end = time.monotonic() + (60 if until_coredns else 0)
            while time.monotonic() < end and not events.COREDNS_READY.first(log.read_events(vm.events)):
                time.sleep(1)
            time.sleep(max(wait_idle, 0))
            got = log.read_events(vm.events)
    except K4sError as e:
        return result | {"ready": False, "error": e.message}
    result["timeline_s"] = {name: (hit or {}).get("t") for name, ev in events.TIMELINE
                            for hit in [ev.first(got)]}
    result["spans_s"] = spans(got)
    stats = events.STATS.all(got)
    if stats:  # the last one: mem_used_mib (MemTotal - MemAvailable), anon_mib, shmem_mib, kernel_mib
        result["idle_mem_used_mib"] = int(stats[-1]["mem_used_mib"])
        result["idle_mem_mib"] = mem_fields(stats[-1])
        ready_at = result["timeline_s"].get("node Ready") or 0
        result["available_after_ready_mib"] = [int(e["mem_total_mib"]) - int(e["mem_used_mib"])
                                               for e in stats if e["t"] >= ready_at]
    return result | {"ready": True}
