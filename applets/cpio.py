"""cpio: list, extract or create newc archives (zstd, xz and gzip segments are unpacked).

    cpio -t ARCHIVE             list: mode, size, name
    cpio -x ARCHIVE -C DIR [--devices]   extract into a new (or empty) DIR, all or nothing
    cpio -c DIR -o ARCHIVE [--compression zstd|xz|gzip|none]   pack DIR deterministically
"""

from __future__ import annotations

import stat
from pathlib import Path

import click

from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import cpio


def read_archive(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise K4sError(f"cannot read {path}: {e.strerror}", hint="check the path") from e


@click.command(help=__doc__.split("\n\n")[0])
@click.option("-t", "--list", "list_", type=click.Path(path_type=Path), help="List an archive.")
@click.option("-x", "--extract", type=click.Path(path_type=Path), help="Extract an archive.")
@click.option("-C", "--directory", type=click.Path(path_type=Path), default=Path("."), help="Extract into DIR.")
@click.option("-c", "--create", type=click.Path(path_type=Path), help="Pack this directory.")
@click.option("-o", "--output", type=click.Path(path_type=Path), help="Archive to write with -c.")
@click.option("--compression", type=click.Choice(["zstd", "xz", "gzip", "none"]), default="none")
@click.option("--devices", is_flag=True, help="Create device nodes and FIFOs (as root); refused otherwise.")
def cli(list_: Path | None, extract: Path | None, directory: Path, create: Path | None, output: Path | None,
        compression: str, devices: bool) -> int:
    if list_:
        for m in cpio.read(read_archive(list_)):
            click.echo(f"{stat.filemode(m.mode)} {m.size:>10} {m.name}"
                       + (f" -> {m.data.decode(errors='replace')}" if stat.S_ISLNK(m.mode) else ""))
        return 0
    if extract:
        n = cpio.extract(read_archive(extract), directory, devices=devices)
        click.echo(f"extracted {n} entries into {directory}")
        return 0
    if create and output:
        t = cpio.Tree()
        t.tree(create, "", "base")
        write_atomic(output, cpio.compress(cpio.bytes_of(t.segment("base")), compression))
        return 0
    raise click.UsageError("give one of -t ARCHIVE, -x ARCHIVE or -c DIR -o ARCHIVE")
