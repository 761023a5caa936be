"""lsmod: list the loaded kernel modules (from /proc/modules).

    lsmod
"""

from __future__ import annotations

import click


@click.command(help=__doc__.split("\n\n")[0])
def cli() -> int:
    from k4s.sys import kmod

    click.echo(f"{'Module':<24}{'Size':>8}  Used by")
    for name, (size, used, users) in sorted(kmod.loaded().items()):
        click.echo(f"{name:<24}{size:>8}  {used} {users}")
    return 0
