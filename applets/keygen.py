"""keygen: make the Ed25519 key pair that signs boot payloads (build host only).

    k4s keygen [--dir out/keys]

Writes signing.key (0600, in a 0700 directory; never copy it into an image)
and signing.pub (built into the first stage, which verifies what it boots).
Refuses to replace an existing key.
"""

from __future__ import annotations

from pathlib import Path

import click


def run(directory: Path) -> int:
    from k4s.image import manifest

    key, pub = manifest.keygen(directory)
    click.echo(f"signing key {key} (keep it on this host)\npublic key  {pub}")
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--dir", "directory", type=click.Path(path_type=Path), default=Path("out/keys"), show_default=True)
def cli(directory: Path) -> int:
    return run(directory)
