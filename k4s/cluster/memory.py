"""Where the node's RAM goes: /proc/meminfo, anonymous memory by process, and the
stats line the console prints every 30 s (what `make bench` reads)."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from k4s import events, log
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.sys import zram
from k4s.sys.mem import meminfo, paging


def memory_summary(mi: dict[str, int], zram_bytes: int | None = None) -> dict[str, int]:
    """Where the used RAM goes, in MiB: used = MemTotal - MemAvailable (the idle-RAM figure),
    anon (process heaps), shmem (tmpfs: the unpacked root, containerd's snapshots, etcd),
    kernel (unreclaimable slab, stacks, page tables), swapped (the pages in zram, uncompressed),
    zram (the RAM they take, part of `used`; read from the device unless given)."""
    if zram_bytes is None:
        zram_bytes = zram.ram_used()
    kernel = mi.get("SUnreclaim", 0) + mi.get("KernelStack", 0) + mi.get("PageTables", 0)
    return {"mem_used_mib": (mi["MemTotal"] - mi["MemAvailable"]) >> 10, "anon_mib": mi.get("AnonPages", 0) >> 10,
            "shmem_mib": mi.get("Shmem", 0) >> 10, "kernel_mib": kernel >> 10,
            "swapped_mib": (mi.get("SwapTotal", 0) - mi.get("SwapFree", 0)) >> 10, "zram_mib": zram_bytes >> 20,
            "mem_total_mib": mi["MemTotal"] >> 10}


def cpu_by_process() -> dict[tuple[int, str], float]:
    """CPU seconds (user + system) each process has used, by (pid, the name it was run as: a
    multicall's component, not "kube")."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            argv0 = (d / "cmdline").read_bytes().split(b"\0", 1)[0]
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        name = os.path.basename(argv0.decode(errors="replace")) or stat[stat.index("(") + 1:stat.rindex(")")]
        out[(int(d.name), name)] = (int(fields[11]) + int(fields[12])) / tick
    return out


def cpu_top(before: dict[tuple[int, str], float], after: dict[tuple[int, str], float], seconds: float,
            n: int = 5) -> str:
    """The processes that used the most CPU between two readings: "name:percent-of-a-CPU,..."."""
    used = sorted(((after[k] - before.get(k, 0.0), k[1]) for k in after), reverse=True)[:n]
    return ",".join(f"{name}:{100 * s / seconds:.0f}%" for s, name in used if s > 0)


def log_stats(stop: threading.Event, log_dir: Path | None = None, every: float = 30.0) -> None:
    """A line of memory, load and the processes that used the most CPU every `every` seconds."""
    cpu = cpu_by_process()
    while not stop.wait(every):
        try:
            mi = meminfo()
        except (OSError, ValueError):
            continue  # no /proc: nothing to report
        now = cpu_by_process()
        log.event(*events.STATS, **memory_summary(mi), **paging(), load1=f"{os.getloadavg()[0]:.2f}",
                  cpu=cpu_top(cpu, now, every))
        cpu = now
        if log_dir is not None:
            write_memory_report(log_dir / "memory.txt", mi)


def anon_by_process() -> list[tuple[int, int, str]]:
    """(RssAnon KiB, pid, name) of every process, biggest first: the part of a process's RSS that
    page reclaim cannot drop (its text pages are file-backed and count as available)."""
    rows = []
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            fields = dict(line.split(":", 1) for line in (d / "status").read_text().splitlines() if ":" in line)
        except OSError:
            continue
        if "RssAnon" in fields:
            rows.append((int(fields["RssAnon"].split()[0]), int(d.name), fields["Name"].strip()))
    return sorted(rows, reverse=True)


def write_memory_report(path: Path, mi: dict[str, int]) -> None:
    """The memory summary and the processes by anonymous RSS: what `make bench` reads for the breakdown."""
    summary = " ".join(f"{k}={v}" for k, v in memory_summary(mi).items())
    lines = [f"{kib >> 10:>6} MiB  {pid:>6}  {name}" for kib, pid, name in anon_by_process()[:20]]
    try:
        write_atomic(path, summary + "\n\nRssAnon by process:\n" + "\n".join(lines) + "\n")
    except K4sError:
        pass
