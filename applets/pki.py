"""pki: create, renew and check the cluster certificates and kubeconfigs.

    k4s pki init  [--config PATH] [--set KEY=VALUE]...
    k4s pki check [--config PATH] [--set KEY=VALUE]...

`init` creates what is missing and re-issues a leaf that expires within
cert-renew-days or no longer names the node (its IP changed); the CAs are
kept. It prints one line per certificate: created, kept or renewed.
`check` lists every certificate with its expiry and problems; exit 1 if any.
"""

from __future__ import annotations

from typing import TextIO

import click

from applets._options import config_options
from k4s import config as configmod
from k4s.cluster import pki
from k4s.config import Config


def run(cfg: Config, action: str, out: TextIO) -> int:
    store = pki.for_config(cfg)
    ident = pki.identity_for(cfg)
    if action == "init":
        for r in store.ensure(ident):
            out.write(f"{r.name:<26} {r.action}{': ' + r.reason if r.reason else ''}\n")
        return 0
    bad = 0
    out.write(f"{'CERTIFICATE':<26} {'EXPIRES':<20} PROBLEMS\n")
    for p in store.check(ident):
        expires = p.expires.strftime("%Y-%m-%d %H:%M UTC") if p.expires else "-"
        out.write(f"{p.name:<26} {expires:<20} {'; '.join(p.problems) or 'ok'}\n")
        bad += bool(p.problems)
    return 1 if bad else 0


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Create missing certificates and kubeconfigs; renew stale leaves.")
@config_options
def init(config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), "init", click.get_text_stream("stdout"))


@cli.command(help="List every certificate with expiry and problems; exit 1 if any.")
@config_options
def check(config_file: str | None, cmdline: str | None, set_: tuple[str, ...]) -> int:
    return run(configmod.load_for_applet(config_file, cmdline, set_), "check", click.get_text_stream("stdout"))
