"""verify: check a payload directory against its signed manifest and a public key.

    k4s verify DIR [--pubkey out/keys/signing.pub] [--pcr]

The signature over manifest.json, then every artifact's size and sha256, and no
file beside them that the manifest does not name. Exit 0 and one line per
artifact, then the serial, the node role and the expiry, when all is well;
otherwise one line naming the artifact and the reason (or that it expired), exit 1.
With --pcr, also the value PCR 15 holds after stage 1 boots this payload on a
machine with a TPM (it extends the PCR with the manifest's sha256, then each
kernel's and initrd's): what a secret sealed to this payload is sealed to.
"""

from __future__ import annotations

from pathlib import Path

import click


def run(directory: Path, pubkey: Path, pcr: bool = False) -> int:
    import time

    from k4s.image import manifest
    from k4s.sys import tpm

    m = manifest.verify_dir(directory, manifest.public_key(pubkey))
    for a in m.artifacts:
        click.echo(f"ok {a.role:<7} {a.name:<28} {a.size:>11} sha256:{a.sha256}")
    left = m.expires - time.time()
    click.echo(f"serial {m.serial}, for a {m.node_role}, "
               + (f"expires {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(m.expires))} (in {left / 86400:.1f} days)"
                  if left > 0 else "EXPIRED: stage 1 refuses it; sign it again (k4s netboot prepare)"))
    if pcr:
        measured = manifest.measurements(m)
        click.echo(f"pcr{tpm.MEASURED_PCR} sha256:{manifest.predict_pcr(measured)} "
                   f"(extended with {', '.join(name for name, _ in measured)})")
    return 0 if left > 0 else 1


@click.command(help=__doc__.split("\n\n")[0])
@click.argument("directory", type=click.Path(path_type=Path))
@click.option("--pubkey", type=click.Path(path_type=Path), default=Path("out/keys/signing.pub"), show_default=True)
@click.option("--pcr", is_flag=True, help="Also print the PCR value stage 1 measures this payload into.")
def cli(directory: Path, pubkey: Path, pcr: bool) -> int:
    return run(directory, pubkey, pcr)
