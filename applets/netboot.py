"""netboot: prepare and serve a payload for PXE (iPXE) boot from this host.

    k4s netboot prepare [--out out/netboot] [--kernel out/vmlinuz] [--initrd FILE]... [--seed]
                        [--base-url URL] [--append ARGS] [--key out/keys/signing.key]
    k4s netboot serve   [--dir out/netboot] [--address 127.0.0.1] [--port 8080] [--tls-cert C --tls-key K]

`prepare` puts the kernel, the initrds (the initramfs, then the seed with the
operator CA's certificate) and boot.ipxe in one directory, and signs them when
a signing key exists; with `make stage1`'s UKI, also stage1.efi, which a UEFI
NIC boots under Secure Boot (`k4s vm run --pxe out/netboot --secure-boot`).
`serve` serves that directory over HTTP until Ctrl-C. With QEMU's user
network, `tftp=out/netboot,bootfile=boot.ipxe` hands the script to the NIC's
iPXE ROM (`k4s vm run --pxe` does this): that path to stage 2 is not verified.
"""

from __future__ import annotations

from pathlib import Path

import click

P = click.Path(path_type=Path)
CMDLINE = "console=ttyS0 quiet panic=-1"


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Put the kernel, initrds, seed and boot.ipxe in one directory, signed when a key exists.")
@click.option("--out", type=P, default=Path("out/netboot"), show_default=True)
@click.option("--kernel", type=P, default=Path("out/vmlinuz"), show_default=True)
@click.option("--initrd", type=P, multiple=True, help="[default: out/initramfs.cpio.zst]")
@click.option("--seed/--no-seed", default=True, show_default=True,
              help="Add the seed (operator CA certificate) as the last initrd.")
@click.option("--operator", type=P, default=Path("out/operator"), show_default=True)
@click.option("--base-url", default="http://${next-server}:8080/", show_default=True,
              help="Where iPXE fetches the files; ${next-server} is the TFTP server's address.")
@click.option("--append", default="", help="More kernel command line.")
@click.option("--key", type=P, default=Path("out/keys/signing.key"), show_default=True,
              help="Sign with this key if it exists (k4s keygen).")
@click.option("--secure-boot-keys", type=P, default=Path("out/keys"), show_default=True,
              help="Sign the kernel with this directory's db key if it has one (k4s keygen): a stage 1 "
              "under Secure Boot kexecs only a kernel its firmware trusts.")
@click.option("--uki", type=P, default=Path("out/stage1.efi"), show_default=True,
              help="Stage 1's signed UKI, as stage1.efi, if it exists (`make stage1`): what a UEFI NIC boots, "
              "verified by the firmware; boot.ipxe's direct path to stage 2 is unverified (development only).")
@click.option("--image-report", type=P, default=Path("out/image-report.json"), show_default=True,
              help="mkimage's report: the squashfs parts to name in the manifest (if it exists).")
@click.option("--serial", type=click.IntRange(0), default=None,
              help="The manifest's serial [default: seconds since the epoch]; stage 1 refuses one below its minimum.")
@click.option("--valid", default="30d", show_default=True, help="How long the signed manifest is valid (e.g. 12h, 30d).")
@click.option("--join", is_flag=True, help="A worker payload: the join's public half (role, server, CA pin, read "
              "through --kubeconfig) on the signed command line, and boot.ipxe loads each machine's own join "
              "segment (netboot serve --kubeconfig mints it).")
@click.option("--kubeconfig", type=P, default=Path("out/kubeconfig"), show_default=True,
              help="With --join: the cluster workers join.")
def prepare(out: Path, kernel: Path, initrd: tuple[Path, ...], seed: bool, operator: Path, base_url: str,
            append: str, key: Path, secure_boot_keys: Path, uki: Path, image_report: Path, serial: int | None,
            valid: str, join: bool, kubeconfig: Path) -> int:
    from k4s.fsutil import write_atomic
    from k4s.host import netboot
    from k4s.host.vm import EVENTS_PORT, VM

    initrds = list(initrd) or [Path("out/initramfs.cpio.zst")]
    if seed:
        path = out.parent / f"{out.name}-seed" / "seed.cpio.zst"
        write_atomic(path, VM(out, kernel, initrds[0], operator_dir=operator).seed())
        initrds.append(path)
    if join:
        append = f"{netboot.join_line(kubeconfig)} {append}"
    cmdline = f"{CMDLINE} k4s.events={EVENTS_PORT} {append}".strip()
    parts = netboot.parts_from_report(image_report) if image_report.exists() and not initrd else []
    from k4s import config
    from k4s.errors import K4sError

    try:
        validity = config.duration(3600, 3650 * 86400)(valid)
    except config.Invalid as e:
        raise K4sError(f"--valid: {e}", hint=e.hint) from None
    sb = secure_boot_keys if (secure_boot_keys / "db.key").exists() else None
    files = netboot.prepare(out, kernel, initrds, cmdline, base_url, key if key.exists() else None, parts,
                            serial, validity, join, sb, uki if uki.exists() else None)
    click.echo(f"{out}: {' '.join(files)}" + (" (signed)" if key.exists() else " (unsigned: no key)")
               + (" kernel signed for Secure Boot" if sb else ""))
    return 0


@cli.command(help="Serve a prepared directory over HTTP (or HTTPS) until Ctrl-C.")
@click.option("--dir", "directory", type=P, default=Path("out/netboot"), show_default=True)
@click.option("--address", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=8080, show_default=True)
@click.option("--tls-cert", type=P, help="Serve HTTPS with this PEM certificate (for a stage 1 built with --payload-ca).")
@click.option("--tls-key", type=P, help="The certificate's PEM private key (stays on this host).")
@click.option("--kubeconfig", type=P, help="Mint each booting worker's join (a single-use token bound to k4s-<MAC>) "
              "at /join/<mac>, through the apiserver, as this kubeconfig's user.")
@click.option("--server", "api_server", default="", help="With --kubeconfig: the apiserver URL workers join "
              "[default: the one cluster-info names].")
def serve(directory: Path, address: str, port: int, tls_cert: Path | None, tls_key: Path | None,
          kubeconfig: Path | None, api_server: str) -> int:
    from k4s import log
    from k4s.cluster import kubeapi
    from k4s.host import netboot

    if (tls_cert is None) != (tls_key is None):
        raise click.UsageError("--tls-cert and --tls-key go together")
    mint = None
    if kubeconfig is not None:
        kubeapi.Client.from_kubeconfig(kubeconfig)  # a readable kubeconfig, checked before serving
        mint = netboot.JoinMinter(kubeconfig, server=api_server)
    srv = netboot.server(directory, address, port, (tls_cert, tls_key) if tls_cert and tls_key else None, mint)
    scheme = "https" if tls_cert else "http"
    log.event("netboot", "serving", dir=directory, url=f"{scheme}://{address}:{srv.server_address[1]}/")
    try:
        srv.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
