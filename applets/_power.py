"""The click command of the poweroff, reboot and halt applets (a factory: one per action)."""

from __future__ import annotations

import click


def power_cli(action: str, doc: str) -> click.Command:
    @click.command(name=action, help=doc.split("\n\n")[0])
    @click.option("-f", "--force", is_flag=True, help=f"Do not stop the node in order; sync and {action} now.")
    def cli(force: bool) -> int:
        from k4s.boot import power

        return power.request(action, force)

    return cli
