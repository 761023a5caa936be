"""oci: build and list the airgap OCI image tarballs.

    k4s oci build --bin DIR [--busybox PATH] --out DIR
    k4s oci ls TARBALL...      (every blob's digest and size is checked first)

`build` writes pause.tar, scratch.tar and busybox.tar (OCI image layouts that
`ctr images import` takes without a registry) from the components in DIR and
Debian's busybox-static, and prints each image's name and manifest digest.
The same inputs give the same digests.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import TextIO

import click

from k4s.errors import K4sError
from k4s.image import oci


def _version(binary: Path, flag: str, pattern: str) -> str:
    try:
        out = subprocess.run([str(binary), flag], capture_output=True, text=True, timeout=30,
                             stdin=subprocess.DEVNULL, env={"PATH": "/usr/bin:/bin"}).stdout
    except OSError as e:
        raise K4sError(f"cannot run {binary}: {e.strerror}", hint="build the components first (make components)") from e
    m = re.search(pattern, out)
    if not m:
        raise K4sError(f"{binary} {flag} printed no version", hint="rebuild the components (make components)")
    return m.group(1)


def busybox_applets(busybox: Path) -> list[str]:
    try:
        out = subprocess.run([str(busybox), "--list"], capture_output=True, text=True, check=True, timeout=30,
                             stdin=subprocess.DEVNULL).stdout
    except (OSError, subprocess.CalledProcessError) as e:
        raise K4sError(f"cannot list the applets of {busybox}: {e}", hint="apt-get install busybox-static") from e
    return out.split()


def run(bindir: Path, busybox: Path, outdir: Path, out: TextIO) -> int:
    images = {
        "pause": oci.pause_image(bindir / "pause"),
        "scratch": oci.scratch_image(),
        "busybox": oci.busybox_image(busybox, busybox_applets(busybox)),
    }
    for stem, image in images.items():
        digest = oci.write(image, outdir / f"{stem}.tar")
        out.write(f"{image.name} {digest} {outdir / (stem + '.tar')}\n")
    # the directory is the image set: a tarball from an older build would be packed too
    for stale in sorted(outdir.glob("*.tar")):
        if stale.stem not in images:
            stale.unlink()
            out.write(f"removed stale {stale}\n")
    return 0


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Write the airgap images (pause, scratch, busybox) as OCI tarballs.")
@click.option("--bin", "bindir", type=click.Path(path_type=Path), required=True,
              help="Directory with the built components (out/components/bin).")
@click.option("--busybox", type=click.Path(path_type=Path), default=Path("/bin/busybox"), show_default=True,
              help="A static busybox for the test image.")
@click.option("--out", "outdir", type=click.Path(path_type=Path), required=True, help="Output directory.")
def build(bindir: Path, busybox: Path, outdir: Path) -> int:
    return run(bindir, busybox, outdir, click.get_text_stream("stdout"))


@cli.command(help="List the image names and digests in OCI tarballs, after checking every blob.")
@click.argument("tarballs", nargs=-1, type=click.Path(path_type=Path), required=True)
def ls(tarballs: tuple[Path, ...]) -> int:
    for t in tarballs:
        for m in oci.verify(t):
            click.echo(f"{m.get('annotations', {}).get('io.containerd.image.name', '?')} {m['digest']} {t}")
    return 0
