"""This image against a baseline image, in one run: boots of this image and of BENCH_BASELINE
(an initramfs built from an earlier commit) interleaved, so the machine's noise hits both alike;
the medians of node Ready and CoreDNS Ready (seconds since kernel start), of each stage of the
boot's critical path (k4s.events.TIMELINE) and of the memory used at idle (BENCH_IDLE seconds
after CoreDNS Ready), and each image's size by the parts that hold the programs."""

from __future__ import annotations

import os
import statistics
from pathlib import Path

from bench.common import INITRD, ROOT, boot

TITLE = "boot to Ready against a baseline image (interleaved boots)"
BOOTS = True
ROUNDS = int(os.environ.get("BENCH_ROUNDS", "3"))
IDLE = float(os.environ.get("BENCH_IDLE", "90"))
PARTS = ("kubernetes", "runtime")  # the squashfs parts of the programs (k4s.layout.PARTS)


def sizes(initrd: Path) -> dict[str, float]:
    """The image's MB, and the compressed MB of each part in PARTS (its squashfs file)."""
    from k4s import layout
    from k4s.image import cpio

    out = {"image_mb": round(initrd.stat().st_size / 1e6, 1)}
    names = {layout.member(layout.part_squashfs(p)): p for p in PARTS}
    for m in cpio.read(initrd.read_bytes()):
        if m.name in names:
            out[f"{names[m.name]}_mb"] = round(m.size / 1e6, 1)
    return out


def skip() -> str:
    """Why this section cannot run here, or ""."""
    if not Path(os.environ.get("BENCH_BASELINE", "")).is_file():
        return "set BENCH_BASELINE to the initramfs of the commit to compare with (built with the same kernel)"
    return ""


def summary(r: dict) -> str:
    """One boot in a line, as it ends: its milestones and idle memory, or why it failed."""
    if not r.get("ready"):
        return f"not Ready: {r.get('error')}"
    t = r.get("timeline_s", {})
    marks = [f"{s} {t[s]} s" for s in ("apiserver ready", "node Ready", "CoreDNS Ready") if t.get(s) is not None]
    return ", ".join([*marks, f"idle {r.get('idle_mem_used_mib')} MiB"])


def measure() -> dict:
    baseline = Path(os.environ["BENCH_BASELINE"])
    runs: dict[str, list[dict]] = {"baseline": [], "this": []}
    for i in range(ROUNDS):
        for name, initrd in (("baseline", baseline), ("this", INITRD)):
            r = boot(1024, initrd=initrd, until_coredns=True, wait_idle=IDLE)
            runs[name].append(r)
            print(f"bench: boot {i + 1}/{ROUNDS} of {name}: {summary(r)}", flush=True)
    out: dict = {"rounds": ROUNDS, "baseline": str(baseline), "idle_s": IDLE}
    for name, rs in runs.items():
        ok = [r for r in rs if r.get("ready")]
        stages = list(ok[0]["timeline_s"]) if ok else []
        idle = [r["idle_mem_used_mib"] for r in ok if "idle_mem_used_mib" in r]
        out[name] = {"ready": len(ok), "errors": [r.get("error") for r in rs if not r.get("ready")],
                     "median_s": {s: round(statistics.median(v), 1) for s in stages
                                  if (v := [r["timeline_s"][s] for r in ok if r["timeline_s"].get(s) is not None])},
                     "node_ready_s": [r["timeline_s"].get("node Ready") for r in ok],
                     "idle_mem_used_mib": idle, "idle_median_mib": statistics.median(idle) if idle else None,
                     **sizes(baseline if name == "baseline" else INITRD)}
        if ok:  # the picture: the boot of this image whose node Ready was the median
            mid = sorted(ok, key=lambda r: r["timeline_s"]["node Ready"])[len(ok) // 2]
            out[name]["spans_s"] = mid["spans_s"]
            out[name]["node_start_s"] = mid["timeline_s"].get("pki")
    return out


SVG = ROOT / "bench" / "timeline.svg"


def render(r: dict) -> list[str]:
    from bench import timeline

    b = r["boot"]
    picture = []
    if spans := b["this"].get("spans_s"):
        SVG.write_text(timeline.svg(spans, b["this"].get("node_start_s") or 0.0,
                                    f"k4s boot to node Ready (TCG, 2 vCPU, 1 GiB): node Ready "
                                    f"{spans.get('node-ready', {}).get('ready', 0):.1f} s after kernel start"))
        picture = [f"![the boot, one bar per service](bench/{SVG.name})", ""]
    base, this = b["baseline"]["median_s"], b["this"]["median_s"]
    rows = [f"| {s} | {base.get(s, '-')} | {this.get(s, '-')} |" for s in this]
    extra = [(f"memory used at idle, MiB ({b.get('idle_s', 90):.0f} s after CoreDNS Ready)", "idle_median_mib"),
             ("image, MB", "image_mb"), *((f"part {p}, MB", f"{p}_mb") for p in PARTS)]
    rows += [f"| {label} | {b['baseline'].get(k, '-')} | {b['this'].get(k, '-')} |" for label, k in extra]
    return [f"This image against a baseline, medians of {b['rounds']} interleaved boots each (TCG, 2 vCPU, 1 GiB; "
            "seconds since kernel start):", "", "| | baseline | this image |", "|---|---|---|", *rows, "",
            f"node Ready in each boot: baseline {b['baseline']['node_ready_s']}, this image {b['this']['node_ready_s']}.",
            "", *picture]
