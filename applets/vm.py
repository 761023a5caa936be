"""vm: boot the appliance in QEMU on the build host (TCG when there is no KVM).

    k4s vm run   [--memory MiB] [--cpus N] [--port P] [--append ARGS] [--manifest FILE]... [--pxe DIR]
                 [--firmware uefi [--secure-boot] [--efi out/stage1.efi]... | --pxe out/netboot]
    k4s vm up    (the same, in the background; returns once the node is Ready)
    k4s vm down  (power off through the ACPI power button; waits for a clean exit)

`run` follows the boot on the console, writes out/kubeconfig once the node is
Ready, prints `kubectl get nodes -o wide`, and powers the VM off cleanly on
Ctrl-C. `--firmware uefi` boots OVMF instead of the kernel, from an ESP holding
the stage-1 UKI (`make stage1`) or, with --pxe, from the NIC (the UKI over
TFTP), and the UKI fetches stage 2 from its signed payload URL (`make netboot`
serves it); `--secure-boot` starts OVMF's Secure Boot build from
out/uefi-vars.fd, where the build enrolled the project's PK, KEK and db.
"""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import click

from k4s.errors import K4sError
from k4s.host.vm import VM

P = click.Path(path_type=Path)


def vm_options(f):  # type: ignore[no-untyped-def]
    for opt in reversed([
        click.option("--out", type=P, default=Path("out"), show_default=True),
        click.option("--kernel", type=P, default=Path("out/vmlinuz"), show_default=True),
        click.option("--initrd", type=P, default=Path("out/initramfs.cpio.zst"), show_default=True),
        click.option("--memory", type=int, default=1024, show_default=True, help="MiB of RAM."),
        click.option("--cpus", type=int, default=2, show_default=True),
        click.option("--port", type=int, default=6443, show_default=True, help="Host port for the apiserver."),
        click.option("--metrics-port", type=int, default=10270, show_default=True,
                     help="Host port for the node's metrics endpoint (`k4s status --remote https://127.0.0.1:PORT`)."),
        click.option("--append", default="", help="Extra kernel command line, e.g. k4s.node-name=edge-1."),
        click.option("--manifest", type=P, multiple=True, help="A manifest to auto-deploy (repeatable)."),
        click.option("--timeout", type=float, default=900, show_default=True, help="Seconds to wait for Ready."),
        click.option("--pxe", type=P, help="Boot from the NIC: QEMU's TFTP hands iPXE DIR/boot.ipxe, which "
                     "fetches the rest over HTTP (run `make netboot` to prepare and serve DIR); with --firmware "
                     "uefi, the firmware's PXE boots DIR/stage1.efi, before any --efi disk."),
        click.option("--lan-listen", "lan_ports", type=int, multiple=True, metavar="PORT",
                     help="Start a virtual L2 that another VM joins on this loopback port (repeatable: one per VM)."),
        click.option("--lan-connect", type=int, default=0, metavar="PORT",
                     help="Join the L2 of the VM listening on PORT, with no user network or forwarded port."),
        click.option("--disk", type=P, help="A qcow2 data disk, created blank if missing; boot with "
                     "--append 'k4s.data=LABEL=K4SDATA k4s.data-format=1' the first time."),
        click.option("--disk-size", default="4G", show_default=True, help="The size a new --disk gets."),
        click.option("--mac", default="", help="The NIC's MAC; each VM on a lan needs its own (e.g. 52:54:00:00:77:02)."),
        click.option("--firmware", type=click.Choice(["bios", "uefi"]), default="bios", show_default=True,
                     help="uefi: OVMF boots --efi from an ESP (no --kernel/--initrd)."),
        click.option("--secure-boot", is_flag=True, help="UEFI Secure Boot with --uefi-vars' keys (implies uefi)."),
        click.option("--efi", type=P, multiple=True, help="A PE image the firmware boots, each on its own ESP, "
                     "tried in order [default: out/stage1.efi]."),
        click.option("--uefi-vars", type=P, default=Path("out/uefi-vars.fd"), show_default=True,
                     help="With --secure-boot: the variable store with the keys enrolled (`make stage1`)."),
        click.option("--tpm", is_flag=True, help="A TPM 2.0 (swtpm): stage 1 measures the payload into PCR 15."),
        click.option("--join-secret", type=P, help="A worker's join segment (`k4s token create --segment FILE`), "
                     "or the join line it printed: the machine's own initrd segment, never its command line."),
    ]):
        f = opt(f)
    return f


def make_vm(out: Path, kernel: Path, initrd: Path, memory: int, cpus: int, port: int, metrics_port: int, append: str,
            manifest: tuple[Path, ...], pxe: Path | None = None, lan_ports: tuple[int, ...] = (),
            lan_connect: int = 0, mac: str = "", disk: Path | None = None, disk_size: str = "4G",
            join_secret: Path | None = None, firmware: str = "bios", secure_boot: bool = False,
            efi: tuple[Path, ...] = (), uefi_vars: Path = Path("out/uefi-vars.fd"), tpm: bool = False) -> VM:
    uefi = firmware == "uefi" or secure_boot
    if efi and not uefi:
        raise click.UsageError("--efi needs --firmware uefi")
    images = tuple(p.resolve() for p in efi or (() if pxe else (Path("out/stage1.efi"),))) if uefi else ()
    return VM(out.resolve(), kernel.resolve(), initrd.resolve(), memory, cpus, port, append, list(manifest),
              pxe=pxe.resolve() if pxe else None, lan_ports=tuple(lan_ports), lan_connect=lan_connect, mac=mac,
              disk=disk.resolve() if disk else None, disk_size=disk_size, metrics_port=metrics_port,
              join_secret=join_secret.resolve() if join_secret else None, seeded=not uefi, efi=images,
              secure_boot=secure_boot, uefi_vars=uefi_vars.resolve() if secure_boot else None, uefi=uefi,
              tpm=tpm)


def kubectl_nodes(vm: VM) -> None:
    kubectl = Path("out/components/bin/kubectl")
    if kubectl.exists():
        subprocess.run([str(kubectl), "--kubeconfig", str(vm.kubeconfig), "get", "nodes", "-o", "wide"], check=False)


def bring_up(vm: VM, timeout: float, echo: bool) -> tuple[subprocess.Popen[bytes], str]:
    t0 = time.monotonic()
    b = vm.boot(timeout=timeout, echo=echo)  # QEMU is stopped if it fails
    proc, name = b.proc, b.node
    if not vm.lan_only:  # a worker has no port of its own: reach the cluster through its server
        vm.write_kubeconfig()
    click.echo(f"k4s: node {name} Ready after {time.monotonic() - t0:.1f}s (QEMU pid {proc.pid})")
    return proc, name


def run_foreground(vm: VM, timeout: float) -> int:
    proc, _ = bring_up(vm, timeout, echo=True)
    kubectl_nodes(vm)
    click.echo(f"\nconnect: kubectl --kubeconfig {vm.kubeconfig} get pods -A\n"
               f"console: {vm.console}\nCtrl-C powers the VM off cleanly.")
    stop = {"asked": False}

    def on_int(*_: object) -> None:
        stop["asked"] = True

    signal.signal(signal.SIGINT, on_int)
    signal.signal(signal.SIGTERM, on_int)
    while proc.poll() is None and not stop["asked"]:
        time.sleep(0.5)
    if proc.poll() is None:
        click.echo("k4s: powering off ...")
        clean = vm.power_off()
        click.echo("k4s: VM powered off" + ("" if clean else " (forced after timeout)"))
    return 0


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Boot in the foreground; Ctrl-C powers off.")
@vm_options
def run(timeout: float, **opts: object) -> int:
    return run_foreground(make_vm(**opts), timeout)  # type: ignore[arg-type]


@cli.command(help="Boot in the background and return once the node is Ready.")
@vm_options
def up(timeout: float, **opts: object) -> int:
    vm = make_vm(**opts)  # type: ignore[arg-type]
    bring_up(vm, timeout, echo=True)
    if not vm.lan_only:
        kubectl_nodes(vm)
    return 0


@cli.command(help="Power the background VM off cleanly.")
@click.option("--out", type=P, default=Path("out"), show_default=True)
@click.option("--timeout", type=float, default=120, show_default=True)
def down(out: Path, timeout: float) -> int:
    vm = VM(out.resolve(), Path(), Path())
    if vm.running() is None:
        click.echo("k4s: no VM running")
        return 0
    if not vm.power_off(timeout):
        raise K4sError(f"the VM did not power off within {timeout:.0f}s; killed", hint=f"see {vm.console}")
    click.echo("k4s: VM powered off")
    return 0
