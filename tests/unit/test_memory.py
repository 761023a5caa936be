"""The idle-RAM figure and its breakdown, from /proc/meminfo as the appliance reports them."""

import os

from k4s.cluster import memory as node
from k4s.sys import mem
from k4s.sys.mem import meminfo

SAMPLE = """MemTotal:         981472 kB
MemFree:           80396 kB
MemAvailable:     457696 kB
Cached:           328932 kB
AnonPages:        348160 kB
Shmem:             98304 kB
SUnreclaim:        24788 kB
KernelStack:        2628 kB
PageTables:         4048 kB
SwapTotal:        491520 kB
SwapFree:         460800 kB
HugePages_Total:       0
"""


def test_summary_splits_used_memory() -> None:
    mi = meminfo(SAMPLE)
    assert mi["HugePages_Total"] == 0
    assert node.memory_summary(mi, zram_bytes=11 << 20) == {
        "mem_used_mib": 511, "anon_mib": 340, "shmem_mib": 96, "kernel_mib": 30, "swapped_mib": 30, "zram_mib": 11,
        "mem_total_mib": 958}


def test_anon_by_process_sees_this_process() -> None:
    rows = node.anon_by_process()
    assert rows == sorted(rows, reverse=True)
    mine = [r for r in rows if r[1] == os.getpid()]
    assert len(mine) == 1 and mine[0][0] > 0


def test_memory_report_is_written(tmp_path) -> None:
    node.write_memory_report(tmp_path / "memory.txt", meminfo(SAMPLE))
    text = (tmp_path / "memory.txt").read_text()
    assert text.startswith("mem_used_mib=511 anon_mib=340")
    rows = text.split("RssAnon by process:\n", 1)[1].splitlines()
    assert 1 <= len(rows) <= 20 and all(r.split()[1] == "MiB" for r in rows)


def test_paging_counts_swapins_and_refaults() -> None:
    assert mem.paging("pswpin 12\npswpout 40\nworkingset_refault_file 977\n") == {"swapins": 12, "refaults": 977}
    live = mem.paging()
    assert set(live) == {"swapins", "refaults"} and all(v >= 0 for v in live.values())
