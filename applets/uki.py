"""uki: build stage 1 as a signed unified kernel image (build host only).

    k4s uki [--kernel out/vmlinuz] [--initrd out/stage1.cpio.xz] [--keys out/keys]
            --cmdline "k4s.payload=http://HOST/PATH/ ..." [--out out/stage1.efi]

One PE file: systemd's EFI stub with the kernel, stage 1's initramfs and the command
line, signed with the db key (`k4s keygen`). UEFI firmware with that key enrolled runs
it; under Secure Boot the embedded command line is the one that boots, so the payload
URL is signed too. Put it at EFI/BOOT/BOOTX64.EFI on an ESP, or hand it to a NIC's
UEFI network boot. The unsigned image is reproducible; the signature carries its time.
"""

from __future__ import annotations

from pathlib import Path

import click

P = click.Path(path_type=Path)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--kernel", type=P, default=Path("out/vmlinuz"), show_default=True)
@click.option("--initrd", type=P, default=Path("out/stage1.cpio.xz"), show_default=True, help="Stage 1's initramfs.")
@click.option("--cmdline", required=True, help="Stage 1's kernel command line, with k4s.payload=URL.")
@click.option("--keys", type=P, default=Path("out/keys"), show_default=True, help="Where db.key and db.crt are.")
@click.option("--out", type=P, default=Path("out/stage1.efi"), show_default=True)
@click.option("--vars", "uefi_vars", type=P, help="Also write OVMF's variable store with the keys' PK, KEK and db "
              "enrolled and Secure Boot on (for `k4s vm --secure-boot`).")
def cli(kernel: Path, initrd: Path, cmdline: str, keys: Path, out: Path, uefi_vars: Path | None) -> int:
    from k4s.host import secureboot
    from k4s.mkimage import uki

    size = uki.build(kernel, initrd, cmdline, out, keys)
    if uefi_vars is not None:
        secureboot.enroll(uefi_vars, keys)
        click.echo(f"{uefi_vars}: OVMF variables, PK, KEK and db of {keys} enrolled, Secure Boot on")
    over = f" over the {uki.LIMIT >> 20} MiB budget of a flash part" if size > uki.LIMIT else ""
    click.echo(f"{out}: {size / (1 << 20):.2f} MiB, signed with {keys / 'db.crt'}{over}", err=bool(over))
    return 0
