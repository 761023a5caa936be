"""init: PID 1 of the k4s appliance.

    /init   (started by the kernel)

Mounts proc, sys, dev, /run, /tmp and cgroup2; reads the k4s.* kernel command
line and /etc/k4s/config.yaml; loads the modules in /etc/k4s/modules.list;
brings up the network (DHCP or k4s.ip=ADDR/PREFIX); runs the node; reaps
orphans. SIGUSR2/SIGPWR/the power button power off, SIGTERM/SIGINT reboot,
SIGUSR1 halts: components stop in order, then sync and reboot(2). A fatal
error is printed with a hint and ends in k4s.on-failure (poweroff by default).
"""

from __future__ import annotations

import click


@click.command(help=__doc__.split("\n\n")[0])
def cli() -> int:
    from k4s.boot.init import run_as_init

    return run_as_init()
