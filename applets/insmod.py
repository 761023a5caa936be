"""insmod: load one kernel module file (no dependency resolution).

    insmod FILE [PARAM=VALUE...]
"""

from __future__ import annotations

from pathlib import Path

import click


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("path", type=click.Path(path_type=Path))
@click.argument("params", nargs=-1)
def cli(path: Path, params: tuple[str, ...]) -> int:
    from k4s.sys import kmod

    kmod.insmod(path, " ".join(params))
    return 0
