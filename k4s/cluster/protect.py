"""Workloads cannot take the node's own components down.

A pod that allocates without limit must take only itself down (Talos's issue 10671
is the failure to avoid: the OOM killer chose the control plane). Three fences:

  - oom_score_adj -999 on every process the supervisor starts: below every pod's (a
    Guaranteed pod's is -997, a BestEffort pod's 1000), so when memory runs out the
    kernel kills a workload first. Its children (containerd's shims, the kubelet's
    helpers) inherit it; the containers get the kubelet's per-QoS scores.
  - on the appliance, a cgroup of their own, /sys/fs/cgroup/k4s, with memory.min: their
    memory, and the pages of their binaries (mapped from squashfs: cheap to drop, dear
    to read back), are not reclaimed for a pod's sake, so a pod filling the machine meets
    the OOM killer instead of a control plane thrashing on its own code. PID 1 enters it
    before it starts anything and every component is born there (containers are moved
    to the kubelet's kubepods by runc). Moving running components in instead (the first
    version) hung one boot in about forty: migrating a multithreaded Go process while
    it forks (the kubelet's iptables) stalled both vCPUs in soft lockups.
    The size is from the bench's idle figures: what the node's own processes use at idle
    on a server or an agent, capped at 40% of the machine.
  - the kubelet's kubeReserved (with enforceNodeAllocatable: pods): the pods' cgroup,
    kubepods, gets memory.max = RAM - what the node itself uses (kernel, the RAM root,
    its processes). memory.min only fences the node's first 256 MiB; the rest of its
    memory is swappable to zram (k4s.sys.zram), and a pod filling the machine pushed
    it there until the whole node thrashed and went NotReady. With the cap, a pod that
    allocates without limit meets its cgroup's OOM killer before the machine is short.

A host running `k4s server` keeps its service manager's cgroups (only PID 1 enters
ours), and a host without cgroup v2's memory controller gets the first fence only.
"""

from __future__ import annotations

import os
from pathlib import Path

from k4s import log

OOM_SCORE_ADJ = -999
CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_NAME = "k4s"
MIN_MIB = {"server": 256, "agent": 96}  # idle anonymous memory of the node's own processes (README)
MAX_SHARE = 0.4
# What the node itself keeps resident at idle: on a 1 GiB server the k4s cgroup holds 517 MiB
# (anonymous 259, the binaries' mapped pages 192, the rest page cache), the RAM root 110, the
# kernel 25; an agent's processes are about half a server's.
NODE_MIB = {"server": 600, "agent": 320}
PODS_MIN_MIB = 160  # the add-ons' requests (88 MiB), the kubelet's eviction threshold (50), room


def memory_min_mib(role: str, total_mib: int) -> int:
    return min(MIN_MIB[role], int(total_mib * MAX_SHARE))


def reserved_mib(role: str, total_mib: int) -> int:
    """The kubelet's kubeReserved memory: the pods get the rest of the machine, and on a
    small one at least PODS_MIN_MIB (the node's own processes swap to zram instead)."""
    return max(0, min(NODE_MIB[role], total_mib - PODS_MIN_MIB))


class Protector:
    def __init__(self, role: str, proc: Path = Path("/proc")) -> None:
        self.role, self.proc = role, proc
        self.cgroup: Path | None = None

    def enter_cgroup(self, total_mib: int, root: Path = CGROUP_ROOT) -> int:
        """Make the node's cgroup with memory.min and move this process into it, so that every
        component is born there; the memory.min in MiB, 0 when there is no cgroup v2 memory
        controller (the oom_score_adj fence still holds)."""
        try:
            if "memory" not in (root / "cgroup.subtree_control").read_text().split():
                raise OSError("the memory controller is not enabled below the root")
            group = root / CGROUP_NAME
            group.mkdir(exist_ok=True)
            mib = memory_min_mib(self.role, total_mib)
            (group / "memory.min").write_text(str(mib << 20))
            (group / "cgroup.procs").write_text(str(os.getpid()))
        except OSError as e:
            log.event("protect", "no-cgroup", level="warn", reason=str(e), oom_score_adj=OOM_SCORE_ADJ)
            return 0
        self.cgroup = group
        log.event("protect", "cgroup", path=group, memory_min_mib=mib, oom_score_adj=OOM_SCORE_ADJ)
        return mib

    def adopt(self, pid: int) -> None:
        """Put a just-started component below every pod in the OOM killer's order."""
        try:
            (self.proc / str(pid) / "oom_score_adj").write_text(str(OOM_SCORE_ADJ))
        except OSError as e:  # it may have exited already (the supervisor sees that), or no CAP_SYS_RESOURCE
            if (self.proc / str(pid)).exists():
                log.event("protect", "adopt-failed", level="warn", pid=pid, error=str(e))
