"""modprobe: load kernel modules with their dependencies (modules.dep, softdep, alias).

    modprobe [-q] [-a] [-n] MODULE [PARAM=VALUE...]
    modprobe -a MODULE...

The kernel calls /sbin/modprobe -q -- NAME for modules it wants (nft
expressions, netdev drivers): this applet answers it.
"""

from __future__ import annotations

import click

from k4s.errors import K4sError


def run(names: list[str], params: str, quiet: bool, dry_run: bool, root: str) -> int:
    from k4s.sys import kmod

    idx = kmod.Index.load(root)
    failed = 0
    for name in names:
        try:
            if dry_run:
                click.echo(" ".join(idx.plan(name)))
            else:
                kmod.modprobe(idx, name, params)
        except K4sError as e:
            failed += 1
            if not quiet:
                click.echo(e.render("modprobe"), err=True)
    return 1 if failed else 0


@click.command(help=__doc__.split("\n\n")[0], context_settings={"ignore_unknown_options": True})
@click.option("-q", "--quiet", is_flag=True, help="Say nothing about modules that cannot be found.")
@click.option("-a", "--all", "load_all", is_flag=True, help="Every argument is a module name.")
@click.option("-n", "--dry-run", is_flag=True, help="Print what would be loaded, in order.")
@click.option("-d", "--dirname", "root", default="/", show_default=True, help="Root of /lib/modules.")
@click.argument("args", nargs=-1, required=True)
def cli(quiet: bool, load_all: bool, dry_run: bool, root: str, args: tuple[str, ...]) -> int:
    args_ = [a for a in args if a != "--"]
    if load_all:
        return run(args_, "", quiet, dry_run, root)
    return run(args_[:1], " ".join(args_[1:]), quiet, dry_run, root)
