"""Time to a Ready node against a baseline image, in one run: boots of this image and of
BENCH_BASELINE (an initramfs built from an earlier commit) interleaved, so the machine's noise
hits both alike; the medians of node Ready and CoreDNS Ready (seconds since kernel start) and
each stage of the boot's critical path (k4s.events.TIMELINE)."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from bench.common import INITRD, boot

TITLE = "boot to Ready against a baseline image (interleaved boots)"
BOOTS = True
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))


def skip() -> str:
    """Why this section cannot run here, or ""."""
    if not Path(os.environ.get("BENCH_BASELINE", "")).is_file():
        return "set BENCH_BASELINE to the initramfs of the commit to compare with (built with the same kernel)"
    return ""


def measure() -> dict:
    baseline = Path(os.environ["BENCH_BASELINE"])
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    for _ in range(ROUNDS):
        for name, initrd in (("baseline", baseline), ("this", INITRD)):
            runs[name].append(boot(1024, initrd=initrd, until_coredns=True))
    out: dict = {"rounds": ROUNDS, "baseline": str(baseline)}
    for name, rs in runs.items():
        ok = [r for r in rs if r.get("ready")]
        stages = list(ok[0]["timeline_s"]) if ok else []
        out[name] = {"ready": len(ok), "errors": [r.get("error") for r in rs if not r.get("ready")],
                     "median_s": {s: round(statistics.median(v), 1) for s in stages
                                  if (v := [r["timeline_s"][s] for r in ok if r["timeline_s"].get(s) is not None])},
                     "node_ready_s": [r["timeline_s"].get("node Ready") for r in ok]}
    return out


def render(r: dict) -> list[str]:
    b = r["boot"]
    base, this = b["baseline"]["median_s"], b["this"]["median_s"]
    rows = [f"| {s} | {base.get(s, '-')} | {this.get(s, '-')} |" for s in this]
    return [f"Time to Ready, medians of {b['rounds']} interleaved boots each (TCG, 2 vCPU, 1 GiB; seconds since "
            "kernel start):", "", "| stage | baseline | this image |", "|---|---|---|", *rows, "",
            f"node Ready in each boot: baseline {b['baseline']['node_ready_s']}, this image {b['this']['node_ready_s']}.",
            ""]
