"""Start-up of the frozen `k4s --version` and an applet dispatch against a bare PyInstaller onedir
hello-world built the same way (interleaved, median); the frozen bundle's size and biggest parts."""

from __future__ import annotations

import statistics
import sys
import tempfile
from pathlib import Path

from bench.common import BENCH, OUT, du, sh, timed_runs

TITLE = "start-up and the frozen bundle"
BOOTS = False


def hello_bundle() -> Path:
    exe = BENCH / "hello" / "hello"
    if exe.exists():
        return exe
    work = Path(tempfile.mkdtemp())
    src = work / "hello.py"
    src.write_text("import sys\nprint('hello')\n")
    sh(sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level", "WARN", "--onedir", "--strip",
       "--workpath", str(work / "w"), "--distpath", str(BENCH), "--specpath", str(work), str(src))
    return exe


def measure() -> dict:
    hello = hello_bundle()
    k4s = OUT / "k4s" / "k4s"
    links = Path(tempfile.mkdtemp())
    (links / "lsmod").symlink_to(k4s)
    cases = {"hello": [str(hello)], "k4s --version": [str(k4s), "--version"], "lsmod (applet)": [str(links / "lsmod")]}
    for argv in cases.values():
        timed_runs(argv, 3)  # warm the page cache
    samples: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(15):  # interleaved, so machine noise hits every case alike
        for k, argv in cases.items():
            samples[k] += timed_runs(argv, 2)
    med = {k: statistics.median(v) * 1000 for k, v in samples.items()}
    internal = OUT / "k4s" / "_internal"
    parts = {p.name: (du(p) if p.is_dir() else p.stat().st_size) for p in internal.iterdir()}
    top = sorted(parts.items(), key=lambda kv: -kv[1])[:6]
    return {"median_ms": {k: round(v, 1) for k, v in med.items()},
            "ratio_version": round(med["k4s --version"] / med["hello"], 2),
            "ratio_applet": round(med["lsmod (applet)"] / med["hello"], 2),
            "bundle": {"total_mb": round(du(OUT / "k4s") / 1e6, 1), "biggest": {k: round(v / 1e6, 1) for k, v in top}}}


def render(r: dict) -> list[str]:
    s = r["startup"]
    out = ["**Start-up** (median, frozen onedir, interleaved runs):", "",
           "| command | ms | vs hello-world |", "|---|---|---|",
           f"| bare PyInstaller hello-world | {s['median_ms']['hello']} | 1.00 |",
           f"| `k4s --version` | {s['median_ms']['k4s --version']} | {s['ratio_version']} |",
           f"| `lsmod` (applet dispatch via symlink) | {s['median_ms']['lsmod (applet)']} | {s['ratio_applet']} |", ""]
    if b := s.get("bundle"):
        out += [f"**Frozen bundle**: {b['total_mb']} MB; biggest parts: "
                + ", ".join(f"{k} {v} MB" for k, v in b["biggest"].items()), ""]
    return out
