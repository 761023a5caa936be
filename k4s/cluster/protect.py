"""Workloads cannot take the node's own components down.

A pod that allocates without limit must take only itself down (Talos's issue 10671
is the failure to avoid: the OOM killer chose the control plane). Two fences, both
on every process the supervisor starts:

  - oom_score_adj -999: below every pod's (a Guaranteed pod's is -997, a BestEffort
    pod's 1000), so when memory runs out the kernel kills a workload first;
  - a cgroup of their own (cgroup v2: /sys/fs/cgroup/k4s) with memory.min, so their
    memory, and the pages of their binaries (mapped from squashfs, cheap to drop and
    dear to read again), are not reclaimed for a pod's sake. The size is from the
    bench's idle figures (README): what the components of a server or an agent use,
    capped at 40% of the machine.

Where cgroup v2 or its memory controller is missing (a host running `k4s server`
on cgroup v1), only the first fence is put up, and that is said once.
"""

from __future__ import annotations

from pathlib import Path

from k4s import log

OOM_SCORE_ADJ = -999
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAME = "k4s"
MIN_MIB = {"server": 256, "agent": 96}  # idle use of the node's own processes, measured
MAX_SHARE = 0.4


def mem_total_mib() -> int:
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def memory_min_mib(role: str, total_mib: int) -> int:
    return min(MIN_MIB[role], int(total_mib * MAX_SHARE))


class Protector:
    def __init__(self, role: str, root: Path = CGROUP_ROOT, proc: Path = Path("/proc")) -> None:
        self.proc = proc
        self.cgroup: Path | None = None
        self.min_mib = 0
        try:
            if "memory" not in (root / "cgroup.subtree_control").read_text().split():
                raise OSError("the memory controller is not enabled below the root")
            group = root / CGROUP_NAME
            group.mkdir(exist_ok=True)
            self.min_mib = memory_min_mib(role, mem_total_mib())
            (group / "memory.min").write_text(str(self.min_mib << 20))
            self.cgroup = group
            log.event("protect", "cgroup", path=group, memory_min_mib=self.min_mib, oom_score_adj=OOM_SCORE_ADJ)
        except OSError as e:
            log.event("protect", "no-cgroup", level="warn", reason=str(e), oom_score_adj=OOM_SCORE_ADJ)

    def adopt(self, pid: int) -> None:
        """Put a just-started component behind both fences (its children inherit them)."""
        try:
            (self.proc / str(pid) / "oom_score_adj").write_text(str(OOM_SCORE_ADJ))
            if self.cgroup is not None:
                (self.cgroup / "cgroup.procs").write_text(str(pid))
        except OSError as e:  # it may have exited already (the supervisor sees that), or no CAP_SYS_RESOURCE
            if (self.proc / str(pid)).exists():
                log.event("protect", "adopt-failed", level="warn", pid=pid, error=str(e))
