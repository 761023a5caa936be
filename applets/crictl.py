"""crictl: crictl from bin-dir, talking to this node's containerd.

    k4s crictl [CRICTL-ARGS...]        (on the appliance also plain `crictl`)

CONTAINER_RUNTIME_ENDPOINT and IMAGE_SERVICE_ENDPOINT, when set, win; otherwise
both are the node's containerd socket under run-dir. On the appliance, which has
no shell: `kubectl debug -n kube-system node/NODE --profile=sysadmin
--image=k4s.local/busybox:1.36 -- chroot /host crictl ps`.
"""

from __future__ import annotations

import os

import click


def run(args: tuple[str, ...]) -> int:
    from applets.kubectl import exec_component
    from k4s import config
    from k4s.cluster.node import Node
    from k4s.sys.env import child_env

    cfg = config.load_for_applet(None, None, ())
    env = child_env(inherit=os.environ)
    socket = f"unix://{Node.of(cfg).containerd_socket}"
    env.setdefault("CONTAINER_RUNTIME_ENDPOINT", socket)
    env.setdefault("IMAGE_SERVICE_ENDPOINT", socket)
    return exec_component(cfg, "crictl", args, env)


@click.command(help=__doc__.split("\n\n")[0], context_settings={"ignore_unknown_options": True,
                                                                 "allow_interspersed_args": False})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def cli(args: tuple[str, ...]) -> int:
    return run(args)
