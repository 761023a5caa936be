"""status: show each component's state, pid, restarts and readiness.

    k4s status [--json] [--config PATH] [--set KEY=VALUE]...

Reads <run-dir>/status.json, which `k4s server` keeps current. Exit 0 when
every component is ready, 1 when some are not, 3 when no server is running.
"""

from __future__ import annotations

import json
from typing import TextIO

import click

from applets._options import config_options
from k4s import config as configmod
from k4s.config import Config
from k4s.layout import Paths


def run(cfg: Config, as_json: bool, out: TextIO) -> int:
    import psutil

    path = Paths.of(cfg.data_dir, cfg.run_dir).status
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        out.write(f"k4s: no server status at {path} (is `k4s server` running?)\n")
        return 3
    alive = psutil.pid_exists(doc.get("supervisor_pid", -1))
    if as_json:
        out.write(json.dumps({**doc, "running": alive}, indent=1) + "\n")
    else:
        out.write(f"supervisor pid {doc.get('supervisor_pid')} {'running' if alive else 'NOT RUNNING'}\n")
        out.write(f"{'COMPONENT':<24} {'STATE':<9} {'PID':>7} {'RESTARTS':>8} {'READY':<5} {'STARTED':>8} {'READY-IN':>8}\n")
        for name, c in doc.get("components", {}).items():
            def secs(v: float | None) -> str:
                return "-" if v is None else f"{v:.1f}s"
            out.write(f"{name:<24} {c['state']:<9} {c['pid'] or '-':>7} {c['restarts']:>8} "
                      f"{'yes' if c['ready'] else 'no':<5} {secs(c['started_after']):>8} {secs(c['ready_after']):>8}\n")
    if not alive:
        return 3
    return 0 if all(c["ready"] for c in doc.get("components", {}).values()) else 1


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--json", "as_json", is_flag=True, help="Print the raw status document.")
@config_options
def cli(as_json: bool, config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), as_json, click.get_text_stream("stdout"))
