"""server: run the single-node cluster under the k4s supervisor.

    k4s server [--control-plane-only] [--config PATH] [--set KEY=VALUE]...

Starts etcd -> kube-apiserver -> controller-manager + scheduler, and
containerd -> (airgap images) -> kubelet -> kube-proxy, each with a readiness
probe, restarting a crashed one with back-off; bootstraps RBAC and CoreDNS and
keeps <data-dir>/manifests applied. Logs per component in <run-dir>/log,
status in <run-dir>/status.json (`k4s status`). SIGTERM or Ctrl-C stops
everything in reverse order.
"""

from __future__ import annotations

import click

from k4s import cliopts
from k4s.config import Config


def run(cfg: Config, control_plane_only: bool) -> int:
    from k4s.node import run_server

    run_server(cfg, control_plane_only)
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--control-plane-only", is_flag=True,
              help="Run etcd, apiserver, controller-manager and scheduler only (hosts without cgroup v2).")
@cliopts.config_options
def cli(control_plane_only: bool, config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(cliopts.load_config(config_file, cmdline, set_), control_plane_only)
