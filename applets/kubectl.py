"""kubectl: kubectl from bin-dir (same version as the cluster), admin kubeconfig by default.

    k4s kubectl [KUBECTL-ARGS...]

KUBECONFIG, when set, wins; otherwise the write-kubeconfig copy (or the
admin kubeconfig under data-dir) is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import click

from k4s.errors import K4sError

if TYPE_CHECKING:
    from k4s.config import Config


def run(args: tuple[str, ...]) -> int:
    from k4s import config
    from k4s.layout import Paths
    from k4s.sys.env import child_env

    cfg = config.load_for_applet(None, None, ())
    env = child_env(inherit=os.environ)
    if "KUBECONFIG" not in env:
        for candidate in (cfg.write_kubeconfig, str(Paths.of(cfg.data_dir, cfg.run_dir).admin_kubeconfig)):
            if os.path.exists(candidate):
                env["KUBECONFIG"] = candidate
                break
    return exec_component(cfg, "kubectl", args, env, "; the appliance ships no kubectl: use the kubeconfig it "
                          "writes (k4s vm: out/kubeconfig) from another machine")


def exec_component(cfg: Config, name: str, args: tuple[str, ...], env: dict[str, str], hint: str = "") -> int:
    """Replace this process with bin-dir's `name` (a client of the node: kubectl, crictl)."""
    exe = os.path.join(cfg.bin_dir, name)
    try:
        os.execve(exe, [exe, *args], env)
    except OSError as e:
        raise K4sError(f"cannot run {exe}: {e.strerror}",
                       hint="check bin-dir or build the components (make components)" + hint) from e
    return 127


@click.command(help=__doc__.split("\n\n")[0], context_settings={"ignore_unknown_options": True,
                                                                 "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cli(args: tuple[str, ...]) -> int:
    return run(args)
