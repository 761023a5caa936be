"""mkimage: build the appliance initramfs (and copy its kernel).

    k4s mkimage --out out/initramfs.cpio.zst [--kernel-out out/vmlinuz] [--compression zstd|xz|gzip|none]

Packs rootfs/, the frozen k4s, the components, the airgap images, the ldd
closure of every ELF and the kernel modules into concatenated newc segments,
one per part, and prints the size of each. The same inputs give the same
sha256. Compressed segments are cached by content, so a rebuild after a
change recompresses only the parts that changed. `--report FILE` writes the
size table as JSON, for tools.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import click

from k4s import mkimage as image
from k4s.fsutil import write_atomic

P = click.Path(path_type=Path)


def run(inp: image.Inputs, out: Path, kernel_out: Path | None, method: str, level: int | None,
        cache: Path | None, payload: str = "squashfs", report: Path | None = None) -> int:
    segs = image.build(inp, out, method, level, cache, payload=payload)
    click.echo(image.report(segs))
    if report:
        write_atomic(report, image.report_json(segs))
    if kernel_out:
        release = image.kernel_release(inp.kernel_root)
        vmlinuz = inp.kernel_root / "boot" / f"vmlinuz-{release}"
        kernel_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(vmlinuz, kernel_out)
        click.echo(f"kernel {release} -> {kernel_out}")
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    click.echo(f"{out}: {out.stat().st_size / 1e6:.1f} MB sha256 {digest}")
    return 0


def run_stage1(bundle: Path, pubkey: Path, kernel_root: Path, out: Path, kernel_out: Path | None,
               report: Path | None, payload_ca: Path | None = None, min_serial: int = 0) -> int:
    seg = image.build_stage1(bundle, pubkey, kernel_root, out, payload_ca=payload_ca, min_serial=min_serial)
    kernel = kernel_root / "boot" / f"vmlinuz-{image.kernel_release(kernel_root)}"
    if kernel_out:
        kernel_out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(kernel, kernel_out)
    total = seg.compressed + kernel.stat().st_size
    click.echo(image.report([seg]))
    click.echo(f"stage 1: kernel {kernel.stat().st_size / 2**20:.1f} MiB + initramfs {seg.compressed / 2**20:.1f} MiB"
               f" = {total / 2**20:.1f} MiB of a 16 MiB flash part")
    if report:
        write_atomic(report, image.report_json([seg]))
    return 0


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--out", type=P, required=True, help="The initramfs to write.")
@click.option("--kernel-out", type=P, help="Copy the kernel here.")
@click.option("--bundle", type=P, default=Path("out/k4s"), show_default=True, help="The frozen k4s (onedir).")
@click.option("--components", type=P, default=Path("out/components/bin"), show_default=True)
@click.option("--images", type=P, default=Path("out/images"), show_default=True)
@click.option("--rootfs", type=P, default=Path("rootfs"), show_default=True)
@click.option("--overlay", type=P, multiple=True, help="Another tree to copy over the rootfs (repeatable).")
@click.option("--kernel-root", type=P, default=Path("/var/cache/k4s/kernel"), show_default=True,
              envvar="K4S_KERNEL_ROOT", help="An unpacked linux-image package (boot/, lib/modules/).")
@click.option("--busybox", type=P, default=Path("/bin/busybox"), show_default=True)
@click.option("--compression", type=click.Choice(["zstd", "xz", "gzip", "none"]), default="zstd", show_default=True)
@click.option("--level", type=int, help="Compression level (zstd 19, xz 9, gzip 9 by default).")
@click.option("--payload", type=click.Choice(["squashfs", "cpio"]), default="squashfs", show_default=True,
              help="squashfs: big binaries and images stay compressed in RAM, mounted by init; "
                   "cpio: unpacked into the RAM root.")
@click.option("--cache", type=P, default=Path("/var/cache/k4s/segments"), show_default=True,
              help="Where compressed segments are kept for reuse.")
@click.option("--report", type=P, help="Write the size table as JSON here.")
@click.option("--stage1", "stage1_pubkey", type=P, metavar="PUBKEY",
              help="Build the first stage instead (--bundle out/stage1/k4s), trusting this public key.")
@click.option("--payload-ca", type=P, metavar="PEM",
              help="With --stage1: the CA bundle an https:// payload server's certificate must verify with.")
@click.option("--min-serial", type=click.IntRange(0), default=0, show_default=True,
              help="With --stage1: the lowest manifest serial it boots; raise it to revoke every older payload.")
def cli(out: Path, kernel_out: Path | None, bundle: Path, components: Path, images: Path, rootfs: Path,
        overlay: tuple[Path, ...], kernel_root: Path, busybox: Path, compression: str, level: int | None,
        payload: str, cache: Path, report: Path | None, stage1_pubkey: Path | None, payload_ca: Path | None,
        min_serial: int) -> int:
    if stage1_pubkey is not None:
        return run_stage1(bundle, stage1_pubkey, kernel_root, out, kernel_out, report, payload_ca, min_serial)
    if payload_ca is not None or min_serial:
        raise click.UsageError("--payload-ca and --min-serial go with --stage1")
    inp = image.Inputs(bundle, components, images, rootfs, kernel_root, busybox, list(overlay))
    return run(inp, out, kernel_out, compression, level, cache, payload, report)
