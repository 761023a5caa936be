"""Network and firmware boot: stage 1's size against its 16 MiB flash part (and as a UKI), fetch +
verify speed (on the host over loopback, and in QEMU), and PXE, LinuxBoot and UEFI Secure Boot to
Ready next to a direct boot."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from bench.common import INITRD, KERNEL, OUT, STAGE1, du

TITLE = "netboot (PXE, LinuxBoot and UEFI Secure Boot)"
BOOTS = True


def boot_wall(vm, srv=None) -> dict:  # type: ignore[no-untyped-def]
    """QEMU start to node Ready, in seconds, for a VM set up to boot some way; srv (the payload
    server it boots from) is shut down after."""
    from k4s import events
    from k4s.errors import K4sError

    t0 = time.monotonic()
    try:
        with vm.booted(timeout=600) as b:
            out = {"ready": True, "ready_wall_s": round(time.monotonic() - t0, 1)}
            if v := events.STAGE1_PAYLOAD_VERIFIED.first(b.events()):
                out["stage1_verified_mb"] = round(v["bytes"] / 1e6, 1)
                out["stage1_fetch_verify_s"] = v["seconds"]
            return out
    except K4sError as e:
        return {"ready": False, "error": e.message}
    finally:
        if srv is not None:
            srv.shutdown()


def measure() -> dict:
    from k4s.boot import stage1
    from k4s.host import netboot
    from k4s.host.vm import CMDLINE, VM
    from k4s.image import manifest
    from k4s.mkimage import uki

    res: dict = {}
    res["stage1_kernel_mib"] = round(KERNEL.stat().st_size / 2**20, 2)
    res["stage1_initramfs_mib"] = round(STAGE1.stat().st_size / 2**20, 2)
    res["stage1_total_mib"] = round(res["stage1_kernel_mib"] + res["stage1_initramfs_mib"], 2)
    internal = OUT / "stage1" / "k4s" / "_internal"
    sizes = {p.name: du(p) for p in internal.iterdir()}
    res["stage1_biggest_mb"] = {k: round(v / 1e6, 1) for k, v in sorted(sizes.items(), key=lambda kv: -kv[1])[:6]}

    tmp = Path(tempfile.mkdtemp())
    try:
        direct = VM(tmp / "direct", KERNEL, INITRD, port=16543, operator_dir=tmp / "operator")
        seed = tmp / "seed.cpio.zst"
        direct.out.mkdir(parents=True)
        seed.write_bytes(direct.seed())
        payload = tmp / "payload"
        netboot.prepare(payload, KERNEL, [INITRD, seed], CMDLINE, "http://${next-server}:18181/",
                        key=OUT / "keys" / "signing.key", secure_boot_keys=OUT / "keys")  # for the UEFI row
        # fetch + verify on the host, over loopback: the code stage 1 runs
        srv = netboot.serve_in_thread(payload)
        t0 = time.monotonic()
        m = stage1.fetch_verified(f"http://127.0.0.1:{srv.server_address[1]}/", tmp / "fetched",
                                  manifest.public_key(OUT / "keys" / "signing.pub"))
        secs = time.monotonic() - t0
        srv.shutdown()
        total = sum(a.size for a in m.artifacts)
        res["host_fetch_verify_s_per_100mb"] = round(secs / (total / 1e8), 2)
        shutil.rmtree(tmp / "fetched")
        # the baseline in the same run: -kernel/-initrd
        res["direct"] = boot_wall(direct)
        # PXE: the NIC's iPXE ROM, boot.ipxe over TFTP, the rest over HTTP
        srv = netboot.serve_in_thread(payload, port=18181)
        res["pxe"] = boot_wall(VM(tmp / "pxe", KERNEL, INITRD, port=16544, operator_dir=tmp / "operator",
                                  pxe=payload), srv)
        # LinuxBoot: stage 1 as -kernel/-initrd, stage 2 fetched, verified, kexec'd
        srv = netboot.serve_in_thread(payload)
        vm1 = VM(tmp / "st1", KERNEL, STAGE1, port=16545, operator_dir=tmp / "operator", seeded=False,
                 append=f"k4s.payload=http://10.0.2.2:{srv.server_address[1]}/")
        res["stage1"] = boot_wall(vm1, srv)
        # UEFI Secure Boot: OVMF (the project's keys enrolled) runs the signed UKI, whose stage 1
        # does the same; the difference to the row above is the firmware's
        srv = netboot.serve_in_thread(payload)
        efi = tmp / "stage1.efi"
        res["uki_mib"] = round(uki.build(KERNEL, STAGE1, f"{CMDLINE} k4s.payload=http://10.0.2.2:"
                                         f"{srv.server_address[1]}/", efi, OUT / "keys") / 2**20, 2)
        res["uefi_secure_boot"] = boot_wall(VM(tmp / "uefi", KERNEL, STAGE1, port=16546, operator_dir=tmp / "operator",
                                               seeded=False, efi=(efi,), secure_boot=True,
                                               uefi_vars=OUT / "uefi-vars.fd"), srv)
        if res["stage1"].get("stage1_verified_mb"):
            res["qemu_fetch_verify_s_per_100mb"] = round(
                res["stage1"]["stage1_fetch_verify_s"] / (res["stage1"]["stage1_verified_mb"] / 100), 2)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return res


def render(r: dict) -> list[str]:
    n = r["netboot"]
    direct = n.get("direct", {}).get("ready_wall_s") or r.get("appliance", {}).get("boot_1024", {}).get("ready_wall_s")
    return ["**Network and firmware boot** (same run; wall clock from QEMU start to node Ready):", "",
            "| boot path | s to Ready |", "|---|---|",
            f"| direct (`-kernel`/`-initrd`) | {direct} |",
            f"| PXE: iPXE ROM, boot.ipxe over TFTP, kernel + initrds over HTTP | {n['pxe'].get('ready_wall_s')} |",
            f"| LinuxBoot: stage 1 fetches, verifies and kexecs stage 2 | {n['stage1'].get('ready_wall_s')} |",
            f"| UEFI Secure Boot: OVMF verifies the stage-1 UKI, then as LinuxBoot (kernel locked down) | "
            f"{n.get('uefi_secure_boot', {}).get('ready_wall_s')} |", "",
            f"Stage 1: kernel {n['stage1_kernel_mib']} MiB + initramfs {n['stage1_initramfs_mib']} MiB = "
            f"**{n['stage1_total_mib']} MiB** of a 16 MiB flash part, as a signed UKI {n.get('uki_mib')} MiB; its biggest parts (MB, before xz): "
            + ", ".join(f"{k} {v}" for k, v in n["stage1_biggest_mb"].items()) + ". "
            f"Fetch + verify (sha256 while streaming, Ed25519 manifest): {n.get('qemu_fetch_verify_s_per_100mb')} s "
            "per 100 MB in QEMU (TCG, user network), "
            f"{n['host_fetch_verify_s_per_100mb']} s per 100 MB on the host over loopback.", ""]
