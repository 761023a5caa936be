"""The appliance in QEMU (TCG): the boot's critical path, memory used at idle, the smallest -m
that still reaches Ready (against the same machine without compressed swap), one process for
the control plane against one per component, the initramfs by part."""

from __future__ import annotations

import json
import statistics
import sys

from bench.common import INITRD, OUT, ROOT, boot, mem_detail, sh

TITLE = "appliance boots (several minutes under TCG)"
BOOTS = True
SMALL = (768, 640, 512)  # -m in MiB, down to the first that does not reach Ready


def image_parts() -> dict:
    report = OUT / "image-report.json"
    sh(sys.executable, "-m", "k4s", "mkimage", "--out", str(INITRD), "--report", str(report), cwd=ROOT)
    return {s["part"]: {"unpacked_mb": round(s["unpacked"] / 1e6, 1), "compressed_mb": round(s["compressed"] / 1e6, 1)}
            for s in json.loads(report.read_text())["segments"]}


def fit(mem: int, append: str = "") -> dict:
    """A boot in a small machine: Ready or not, CoreDNS Ready or not, and what is left 120 s after Ready."""
    r = boot(mem, wait_idle=120, append=append)
    out = {k: r.get(k) for k in ("ready", "ready_wall_s", "error")}
    out["coredns_ready_s"] = r.get("timeline_s", {}).get("CoreDNS Ready")
    if m := r.get("idle_mem_mib"):
        # one stats line swings by 15-20 MiB on a thrashing machine: the median of the window's
        avail = r.get("available_after_ready_mib") or [m["mem_total_mib"] - m["mem_used_mib"]]
        out |= {"idle_available_mib": int(statistics.median(avail)), "idle_available_min_mib": min(avail),
                "mem_total_mib": m["mem_total_mib"],
                "swapped_mib": m.get("swapped_mib", 0), "zram_mib": m.get("zram_mib", 0)}
    return out


def measure() -> dict:
    res = {"image_parts": image_parts(), "boot_1024": boot(1024, wait_idle=90),
           # the baseline: one process per component
           "boot_1024_separate": boot(1024, wait_idle=90, append="k4s.component-processes=separate")}
    for mem in SMALL:
        res[f"boot_{mem}"] = fit(mem)
        if not res[f"boot_{mem}"].get("ready"):
            break
    # the baseline: the same 512 MiB machine without compressed swap
    res["boot_512_nozram"] = fit(512, append="k4s.zram=0")
    res["smallest_ready_mib"] = min([1024] + [m for m in SMALL if res.get(f"boot_{m}", {}).get("ready")])
    return res


def render(r: dict) -> list[str]:
    a = r["appliance"]
    b = a["boot_1024"]
    out = ["**Appliance in QEMU** (TCG, 2 vCPU, 1 GiB; seconds since kernel start):", "",
           "| stage | s |", "|---|---|"] + [f"| {k} | {v} |" for k, v in b.get("timeline_s", {}).items()] + [
           "", f"Wall clock from QEMU start to node Ready: {b.get('ready_wall_s')} s. Memory used at idle "
           f"(MemTotal - MemAvailable, 90 s after Ready): {b.get('idle_mem_used_mib')} MiB"
           + mem_detail(b.get("idle_mem_mib", {})) + ".", ""]
    fits = [(f"{m}", a[f"boot_{m}"]) for m in SMALL if f"boot_{m}" in a]
    fits += [("512, `k4s.zram=0` (baseline)", a["boot_512_nozram"])] if "boot_512_nozram" in a else []
    out += [f"Small machines (smallest -m that reached Ready: **{a['smallest_ready_mib']} MiB**; the target is "
            "Ready at 512 with 100 MiB available at idle):", "",
            "| -m MiB | node Ready (wall s) | CoreDNS Ready (s) | available in the 120 s after Ready, median (least) | "
            "swapped to zram (RAM it takes) |", "|---|---|---|---|---|"]
    for name, f in fits:
        avail = (f"{f['idle_available_mib']} ({f.get('idle_available_min_mib', '-')}) of {f['mem_total_mib']} MiB"
                 if "idle_available_mib" in f else "-")
        swap = f"{f['swapped_mib']} MiB ({f['zram_mib']} MiB)" if "swapped_mib" in f else "-"
        out.append(f"| {name} | {f['ready_wall_s'] if f.get('ready') else 'not Ready: ' + str(f.get('error'))} "
                   f"| {f.get('coredns_ready_s') or '-'} | {avail} | {swap} |")
    out.append("")
    sep = a.get("boot_1024_separate", {})
    if sep.get("idle_mem_used_mib"):
        out += [f"Baseline in the same run, `k4s.component-processes=separate` (one process per component): "
                f"node Ready {sep.get('timeline_s', {}).get('node Ready')} s, idle "
                f"{sep['idle_mem_used_mib']} MiB (anon {sep['idle_mem_mib'].get('anon_mib')} MiB) vs "
                f"{b.get('idle_mem_used_mib')} MiB shared: "
                f"**{b.get('idle_mem_used_mib', 0) / sep['idle_mem_used_mib']:.2f}x**.", ""]
    out += ["| part | unpacked MB | in the initramfs MB |", "|---|---|---|"]
    out += [f"| {k} | {v['unpacked_mb']} | {v['compressed_mb']} |" for k, v in a["image_parts"].items()]
    return out + [""]
