"""sign: write the signed manifest of a payload directory.

    k4s sign --key KEY DIR --cmdline TEXT --kernel NAME [--initrd NAME]... [--config NAME] [--part NAME]...

Lists the size and sha256 of each named artifact (kernel, the initrds in boot
order, the config, squashfs parts) and the kernel command line in
DIR/manifest.json, and signs its exact bytes with Ed25519 into DIR/manifest.sig.
"""

from __future__ import annotations

from pathlib import Path

import click

P = click.Path(path_type=Path)


def run(directory: Path, key: Path, cmdline: str, roles: list[tuple[str, str]]) -> int:
    from k4s.image import manifest

    m = manifest.sign(directory, key, roles, cmdline)
    for a in m.artifacts:
        click.echo(f"{a.role:<7} {a.name:<28} {a.size:>11} sha256:{a.sha256}")
    click.echo(f"signed {directory / manifest.MANIFEST} -> {directory / manifest.SIGNATURE}")
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("directory", type=P)
@click.option("--key", type=P, default=Path("out/keys/signing.key"), show_default=True)
@click.option("--cmdline", default="", help="The kernel command line to sign.")
@click.option("--kernel", required=True)
@click.option("--initrd", multiple=True)
@click.option("--config")
@click.option("--part", multiple=True)
def cli(directory: Path, key: Path, cmdline: str, kernel: str, initrd: tuple[str, ...], config: str | None,
        part: tuple[str, ...]) -> int:
    roles = [(kernel, "kernel"), *((n, "initrd") for n in initrd), *([(config, "config")] if config else []),
             *((n, "part") for n in part)]
    return run(directory, key, cmdline, roles)
