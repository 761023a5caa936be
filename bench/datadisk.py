"""The 1 GiB boot with a data disk: first on a blank one (formatted at boot), then again on the
state the first left (etcd, PKI, images already there), next to the RAM-only boot."""

from __future__ import annotations

import tempfile
from pathlib import Path

from bench.common import boot

TITLE = "a data disk (two boots)"
BOOTS = True


def measure() -> dict:
    disk = Path(tempfile.mkdtemp()) / "data.qcow2"
    ram = boot(1024, wait_idle=60)
    first = boot(1024, wait_idle=60, append="k4s.data=LABEL=K4SDATA k4s.data-format=1", disk=disk)
    again = boot(1024, wait_idle=60, append="k4s.data=LABEL=K4SDATA", disk=disk)
    keep = ("ready", "ready_wall_s", "error", "idle_mem_used_mib", "idle_mem_mib")
    return {"ram": {k: ram.get(k) for k in keep}, "first": {k: first.get(k) for k in keep},
            "again": {k: again.get(k) for k in keep},
            "node_ready_s": {"ram": ram.get("timeline_s", {}).get("node Ready"),
                             "first": first.get("timeline_s", {}).get("node Ready"),
                             "again": again.get("timeline_s", {}).get("node Ready")},
            "disk_mib_used": round(disk.stat().st_size / 2**20, 1)}


def render(r: dict) -> list[str]:
    d = r["datadisk"]
    if not d["first"].get("ready"):
        return [f"Data disk bench: the first boot did not reach Ready: {d['first'].get('error')}", ""]

    def row(label: str, key: str) -> str:
        x = d.get(key) or {}
        m = x.get("idle_mem_mib") or {}
        return (f"| {label} | {d['node_ready_s'].get(key)} | {x.get('ready_wall_s')} | "
                f"{x.get('idle_mem_used_mib')} MiB (shmem {m.get('shmem_mib')}) |")
    return ["With a data disk (`k4s.data=LABEL=K4SDATA`, same run, 1 GiB):", "",
            "| boot | node Ready s | wall s | used at idle |", "|---|---|---|---|",
            row("RAM only", "ram"), row("blank disk, formatted at boot", "first"),
            row("again, on the state it left", "again"), "",
            f"The qcow2 holds {d['disk_mib_used']} MiB after the two boots.", ""]
