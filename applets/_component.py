"""The applets that wrap one upstream component (a click command factory): config -> flags -> exec.

`kubelet` (a symlink to k4s) builds the kubelet's flags and config file from
the k4s Config, then execs the upstream kubelet with an explicit environment;
extra arguments pass through. `kubelet --version` goes straight to upstream.
"""

from __future__ import annotations

import os

import click

from k4s import config
from k4s.cluster import components
from k4s.errors import K4sError
from k4s.sys.env import child_env

PASSTHROUGH = {"--version", "version", "-version"}


def exec_component(name: str, args: tuple[str, ...]) -> int:
    from k4s.cluster.node import Node

    m = components.module(name)
    cfg = config.load_for_applet(None, None, ())
    if PASSTHROUGH & set(args):
        argv = [os.path.join(cfg.bin_dir, m.BINARY), *args]
    else:
        argv = [*components.argv(name, Node.of(cfg)), *args]
    env = child_env(cfg.bin_dir, cfg.component_gogc, gomaxprocs=cfg.component_gomaxprocs)
    try:
        os.execve(argv[0], argv, env)
    except OSError as e:
        raise K4sError(f"cannot run {argv[0]}: {e.strerror}",
                       hint="build the components (make components) and check bin-dir") from e
    return 127  # not reached


def component_cli(name: str, doc: str) -> click.Command:
    @click.command(name=name, help=doc.split("\n\n")[0] + "\n\nConfig comes from K4S_CONFIG (or "
                   "/etc/k4s/config.yaml) and the kernel command line. Extra arguments go to the upstream "
                   f"{name}; `{name} -- --help` shows its own help.",
                   context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def cli(args: tuple[str, ...]) -> int:
        return exec_component(name, args)

    return cli
