"""verify: check a payload directory against its signed manifest and a public key.

    k4s verify DIR [--pubkey out/keys/signing.pub]

The signature over manifest.json, then every artifact's size and sha256, and no
file beside them that the manifest does not name. Exit 0 and one line per
artifact when all is well; otherwise one line naming the artifact and the
reason, exit 1.
"""

from __future__ import annotations

from pathlib import Path

import click


def run(directory: Path, pubkey: Path) -> int:
    from k4s.image import manifest

    m = manifest.verify_dir(directory, manifest.public_key(pubkey))
    for a in m.artifacts:
        click.echo(f"ok {a.role:<7} {a.name:<28} {a.size:>11} sha256:{a.sha256}")
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--pubkey", type=click.Path(path_type=Path), default=Path("out/keys/signing.pub"), show_default=True)
def cli(directory: Path, pubkey: Path) -> int:
    return run(directory, pubkey)
