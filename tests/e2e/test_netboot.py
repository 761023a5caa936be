"""Network boot: PXE through the NIC's iPXE ROM, and signed payloads."""

from __future__ import annotations

import subprocess
import time

from k4s.host import netboot
from k4s.host.vm import EVENTS_PORT
from tests.e2e.conftest import KUBECTL, make_vm

HTTP_PORT = 18080


def test_pxe_boot_through_ipxe_to_a_ready_node(tmp_path) -> None:
    """No -kernel: SeaBIOS runs the virtio NIC's iPXE ROM, QEMU's DHCP+TFTP hand it boot.ipxe,
    which loads the kernel, the initramfs and the seed over HTTP from `netboot serve`."""
    vm = make_vm(tmp_path / "vm")
    vm.out.mkdir(parents=True)
    seed = tmp_path / "seed.cpio.zst"
    seed.write_bytes(vm.seed())
    payload = tmp_path / "netboot"
    netboot.prepare(payload, vm.kernel, [vm.initrd, seed], f"console=ttyS0 quiet panic=-1 k4s.events={EVENTS_PORT}",
                    f"http://${{next-server}}:{HTTP_PORT}/")
    serve = subprocess.Popen([*k4s_cmd_argv(), "netboot", "serve", "--dir", str(payload), "--port", str(HTTP_PORT)],
                             stdout=subprocess.DEVNULL, stderr=open(tmp_path / "serve.log", "w"))
    vm.pxe = payload
    proc = vm.start()
    try:
        t0 = time.monotonic()
        vm.wait_ready(proc, timeout=600, echo=False)
        vm.write_kubeconfig()
        r = subprocess.run([str(KUBECTL), "--kubeconfig", str(vm.kubeconfig), "get", "nodes", "-o",
                            "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status}"],
                           capture_output=True, text=True, timeout=60)
        assert r.stdout == "True", r.stderr
        served = (tmp_path / "serve.log").read_text()
        for name in ("/vmlinuz", "/initramfs.cpio.zst", "/seed.cpio.zst"):
            assert f"path={name} status=200" in served, served
        assert time.monotonic() - t0 < 600
    finally:
        vm.power_off(120)
        if proc.poll() is None:
            proc.kill()
        serve.terminate()
        serve.wait(10)


def k4s_cmd_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "k4s"]
