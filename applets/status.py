"""status: show each component's state and readiness, memory and certificates, here or --remote.

    k4s status [--json] [--config PATH] [--set KEY=VALUE]...
    k4s status --remote https://NODE:10270 [--kubeconfig out/kubeconfig] [--json]

Locally it reads what `k4s server` keeps current under run-dir (the same data
the metrics endpoint serves). --remote asks a node's metrics endpoint (its
/status) with the kubeconfig's client certificate, trusting the kubeconfig's CA:
an appliance has no shell. Exit 0 when every component is ready, 1 when some
are not, 3 when no server is running or the node cannot be reached.
"""

from __future__ import annotations

import datetime as dt
import json
import time
from pathlib import Path
from typing import Any, TextIO

import click

from applets._options import config_options
from k4s import config as configmod
from k4s.cluster import metrics
from k4s.errors import K4sError
from k4s.layout import Paths


def _secs(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}s"


def render(doc: dict[str, Any], out: TextIO) -> None:
    from k4s.cluster import services

    comps = doc.get("components", {})
    ready_at = {n: c.get("ready_at") for n, c in comps.items()}
    could = services.deps_ready(ready_at)
    # the boot as a critical path: when each could have started (what it waits for ready), when it
    # did, when it was first ready (seconds since the node's start)
    out.write(f"{'COMPONENT':<24} {'STATE':<9} {'PID':>7} {'RESTARTS':>8} {'READY':<5} {'DEPS-READY':>10} "
              f"{'STARTED':>8} {'READY-AT':>8}\n")
    for name, c in comps.items():
        out.write(f"{name:<24} {c['state']:<9} {c['pid'] or '-':>7} {c['restarts']:>8} "
                  f"{'yes' if c['ready'] else 'no':<5} {_secs(could.get(name)):>10} {_secs(c['started_after']):>8} "
                  f"{_secs(c.get('ready_at')):>8}\n")
    if ready_at.get("node-ready") is not None:
        out.write("critical path to node Ready: " + " -> ".join(
            f"{n} {ready_at[n]:.1f}s" for n in services.critical_path(ready_at) if ready_at.get(n) is not None) + "\n")
    if boot := doc.get("boot"):
        out.write(f"boot: {boot['firmware'].upper()} firmware, Secure Boot {boot['secure_boot']}, "
                  f"kernel lockdown {boot['lockdown']}"
                  + (f"; TPM PCR 15 sha256:{boot['pcr15']} (compare `k4s verify PAYLOAD --pcr`)" if "pcr15" in boot
                     else "") + "\n")
    if m := doc.get("measured"):
        out.write("measured boot: " + ", ".join(f"PCR {p} sha256:{v}" for p, v in m["pcrs"].items()) + "\n")
        if m.get("error"):
            out.write(f"  stage 1's log: {m['error']}\n")
        elif m["log"]:
            out.write(f"  stage 1's log, {len(m['log'])} events, "
                      + ("replays to PCR 15:" if m["replays"] else "DOES NOT replay to PCR 15 (it was extended "
                         "with something else):") + "\n")
            for r in m["log"]:
                out.write(f"    PCR {r['pcr']} sha256:{r['digest']} {r['name']}\n")
    if etcd := doc.get("etcd"):
        if "error" in etcd:
            out.write(f"etcd: cannot list its members: {etcd['error']}\n")
        else:
            ms = etcd.get("members", [])
            out.write(f"etcd: {len(ms)} members, {sum(not m['learner'] for m in ms)} voting: " + ", ".join(
                m["name"] + (" (leader)" if m["leader"] else "") + (" (learner)" if m["learner"] else "")
                for m in ms) + "\n")
    if mem := doc.get("memory"):
        out.write(f"\nmemory: {mem['mem_used_mib']} MiB used of {mem['mem_total_mib']} ({mem['mem_available_mib']} "
                  f"available): anon {mem['anon_mib']}, shmem {mem['shmem_mib']}, kernel {mem['kernel_mib']}"
                  + (f"; {mem['swapped_mib']} MiB swapped to zram in {mem.get('zram_mib', 0)} MiB of RAM"
                     if mem.get("swapped_mib") else "") + "\n")
        if procs := doc.get("processes"):
            out.write("anonymous memory by process: " + ", ".join(
                f"{p['name']} {p['anon_mib']:.0f}" for p in procs if p["anon_mib"] >= 1) + " (MiB)\n")
    if certs := doc.get("certificates"):
        out.write(f"\n{'CERTIFICATE':<26} {'EXPIRES':<17} LEFT\n")
        now = time.time()
        for name, c in certs.items():
            when = dt.datetime.fromtimestamp(c["expires"], dt.UTC).strftime("%Y-%m-%d %H:%M")
            left = (c["expires"] - now) / 86400
            out.write(f"{name + (' (CA)' if c.get('ca') else ''):<26} {when:<17} "
                      f"{f'{left:.0f} days' if left >= 2 else f'{left * 24:.1f} hours'}\n")
        out.write(f"renewed while running: {doc.get('renewals', 0)}\n")


def local(paths: Paths) -> tuple[dict[str, Any] | None, bool]:
    import psutil

    if not paths.status.exists():
        return None, False
    doc = metrics.snapshot(paths)
    return doc, psutil.pid_exists(doc.get("supervisor_pid") or -1)


def remote(url: str, kubeconfig: Path) -> dict[str, Any]:
    """GET <url>/status with the kubeconfig's client certificate (k4s.host.operator.endpoint_context)."""
    import urllib.request

    from k4s.host.operator import endpoint_context

    with urllib.request.urlopen(url.rstrip("/") + "/status", context=endpoint_context(kubeconfig), timeout=30) as r:
        return json.loads(r.read())


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--json", "as_json", is_flag=True, help="Print the status document.")
@click.option("--remote", "remote_url", metavar="URL", help="A node's metrics endpoint, e.g. https://10.0.0.5:10270.")
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=Path("out/kubeconfig"),
              show_default=True, help="With --remote: whose client certificate to present.")
@config_options
def cli(as_json: bool, remote_url: str | None, kubeconfig: Path, config_file: str | None, cmdline: str | None,
        set_: tuple[str, ...]) -> int:
    out = click.get_text_stream("stdout")
    if remote_url:
        try:
            doc, alive = remote(remote_url, kubeconfig), True
        except K4sError as e:
            out.write(e.render("k4s status") + "\n")
            return 3
        except (OSError, ValueError) as e:
            out.write(f"k4s: cannot read {remote_url}/status: {e}\n")
            return 3
    else:
        cfg = configmod.load_for_applet(config_file, cmdline, set_)
        paths = Paths.of(cfg.data_dir, cfg.run_dir)
        doc, alive = local(paths)
        if doc is None:
            out.write(f"k4s: no server status at {paths.status} (is `k4s server` running?)\n")
            return 3
    if as_json:
        out.write(json.dumps({**doc, "running": alive}, indent=1) + "\n")
    else:
        out.write(f"supervisor pid {doc.get('supervisor_pid')} {'running' if alive else 'NOT RUNNING'}\n")
        render(doc, out)
    if not alive:
        return 3
    return 0 if all(c["ready"] for c in doc.get("components", {}).values()) else 1
