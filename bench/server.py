"""`k4s server --control-plane-only` on the host, one process for the control plane against one
process per component: time to apiserver ready, per-component start, PSS and RSS at idle."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import BIN, ROOT

TITLE = "k4s server on the host"
BOOTS = False
MODES = ("shared", "separate")


def measure() -> dict:
    return {mode: server(mode) for mode in MODES}


def server(processes: str) -> dict:
    import psutil

    tmp = Path(tempfile.mkdtemp())
    argv = [sys.executable, "-m", "k4s", "server", "--control-plane-only", "--cmdline", "", "--config", os.devnull,
            "--set", f"data-dir={tmp}/data", "--set", f"run-dir={tmp}/run", "--set", f"bin-dir={BIN}",
            "--set", f"write-kubeconfig={tmp}/kc", "--set", "node-name=bench", "--set", "node-ip=127.0.0.1",
            "--set", f"component-processes={processes}"]
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    status = {}
    try:
        while time.monotonic() - t0 < 180:
            try:
                status = json.loads((tmp / "run/status.json").read_text())["components"]
                if status["kube-apiserver"]["ready"]:
                    break
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.05)
        api_ready = time.monotonic() - t0
        while not all(c["ready"] for c in status.values()) and time.monotonic() - t0 < 180:
            time.sleep(0.2)
            status = json.loads((tmp / "run/status.json").read_text())["components"]
        time.sleep(30)  # idle
        status = json.loads((tmp / "run/status.json").read_text())["components"]
        # PSS: shared pages (the multicall's text, mapped by five processes) split between their users
        # one entry per process, named by the components in it
        by_pid: dict[int, list[str]] = {}
        for n, c in status.items():
            if c["pid"]:
                by_pid.setdefault(c["pid"], []).append(n)
        pids = {" + ".join(ns): p for p, ns in by_pid.items()} | {"k4s (supervisor)": proc.pid}
        full = {n: psutil.Process(p).memory_full_info() for n, p in pids.items()}
        rss = {n: round(m.rss / 2**20, 1) for n, m in full.items()}
        pss = {n: round(m.pss / 2**20, 1) for n, m in full.items()}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        shutil.rmtree(tmp, ignore_errors=True)
    return {"apiserver_ready_s": round(api_ready, 2),
            "component_start_s": {n: c["started_after"] for n, c in status.items()},
            "component_ready_in_s": {n: c["ready_after"] for n, c in status.items()},
            "idle_rss_mib": rss, "idle_pss_mib": pss, "idle_pss_total_mib": round(sum(pss.values()), 1)}


def render(r: dict) -> list[str]:
    out: list[str] = []
    for mode in MODES:
        s = r["server"].get(mode)
        if not s:
            continue
        out += [f"**`k4s server --control-plane-only`** on the host, component-processes: {mode}: apiserver ready "
                f"after {s['apiserver_ready_s']} s. Start (s after launch) / ready-in (s): "
                + ", ".join(f"{n} {s['component_start_s'][n]}/{s['component_ready_in_s'][n]}"
                            for n in s["component_start_s"]),
                "", f"Idle memory by process, PSS (RSS) in MiB, total PSS **{s.get('idle_pss_total_mib')}**: "
                + ", ".join(f"{k} {s['idle_pss_mib'].get(k, '?')} ({v})" for k, v in s["idle_rss_mib"].items()), ""]
    return out
