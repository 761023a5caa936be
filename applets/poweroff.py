"""poweroff: ask init to stop the node in order and poweroff.

    poweroff [-f]

-f skips the orderly stop: sync and poweroff at once (as root).
"""

from __future__ import annotations

import click


@click.command(help=__doc__.split("\n\n")[0])
@click.option("-f", "--force", is_flag=True, help="Do not stop the node in order; sync and poweroff now.")
def cli(force: bool) -> int:
    from k4s.power import request

    return request("poweroff", force)
