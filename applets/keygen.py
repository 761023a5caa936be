"""keygen: make the keys that sign what machines boot (build host only).

    k4s keygen [--dir out/keys]

Writes what is missing of:
  signing.key (0600) / signing.pub   Ed25519: signs stage 2's manifest; the public key is
                                     built into stage 1, which verifies what it boots
  PK, KEK, db (.key 0600 / .crt)     UEFI Secure Boot (RSA-2048): the firmware runs only what
                                     db signed (the stage-1 UKI, stage 2's kernel)
  secureboot.guid                    the owner GUID they are enrolled under
in a 0700 directory; a key never goes into an image. An existing key is never
replaced (what it signed would stop booting); with every key present it is an error.
"""

from __future__ import annotations

from pathlib import Path

import click


def run(directory: Path) -> int:
    from k4s.errors import K4sError
    from k4s.host import secureboot
    from k4s.image import manifest

    made = []
    if not (directory / manifest.SECRET_KEY).exists():
        made += manifest.keygen(directory)
    made += secureboot.keygen(directory)
    if not made:
        raise K4sError(f"every key in {directory} exists; refusing to replace one",
                       hint="remove a key first if you mean to: what it signed will no longer boot")
    for p in made:
        kind = "keep on this host" if p.suffix == ".key" else "public"
        click.echo(f"{p} ({kind})")
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("out/keys"), show_default=True)
def cli(directory: Path) -> int:
    return run(directory)
