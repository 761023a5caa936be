"""Workloads cannot take the node's own components down.

A pod that allocates without limit must take only itself down (Talos's issue 10671
is the failure to avoid: the OOM killer chose the control plane). Every process the
supervisor starts gets oom_score_adj -999: below every pod's (a Guaranteed pod's is
-997, a BestEffort pod's 1000), so when memory runs out the kernel kills a workload
first. Its children (containerd's shims, the kubelet's helpers) inherit it; the
containers themselves get the kubelet's per-QoS scores.

Not here yet: a cgroup of their own with memory.min. A first version moved each
component into /sys/fs/cgroup/k4s as it started; one boot in about forty then hung
with both vCPUs in soft lockups (a k4s thread and the kubelet's iptables) right
after the kubelet was moved. Until that is understood it stays out.
"""

from __future__ import annotations

from pathlib import Path

from k4s import log

OOM_SCORE_ADJ = -999


class Protector:
    def __init__(self, role: str, proc: Path = Path("/proc")) -> None:
        self.role, self.proc = role, proc
        log.event("protect", "oom-score", oom_score_adj=OOM_SCORE_ADJ)

    def adopt(self, pid: int) -> None:
        """Put a just-started component below every pod in the OOM killer's order."""
        try:
            (self.proc / str(pid) / "oom_score_adj").write_text(str(OOM_SCORE_ADJ))
        except OSError as e:  # it may have exited already (the supervisor sees that), or no CAP_SYS_RESOURCE
            if (self.proc / str(pid)).exists():
                log.event("protect", "adopt-failed", level="warn", pid=pid, error=str(e))
