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

from applets._options import config_options
from k4s import config as configmod
from k4s.config import Config


def run(cfg: Config, control_plane_only: bool) -> int:
    from k4s import log
    from k4s.cluster.server import run_server
    from k4s.layout import Paths

    paths = Paths.of(cfg.data_dir, cfg.run_dir)
    log.setup(paths.logs, cfg.log_level, events=paths.events)
    run_server(cfg, control_plane_only)
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--control-plane-only", is_flag=True,
              help="Run etcd, apiserver, controller-manager and scheduler only (hosts without cgroup v2).")
@config_options
def cli(control_plane_only: bool, config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), control_plane_only)
