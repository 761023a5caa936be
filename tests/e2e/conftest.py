"""The appliance booted in QEMU (TCG): one boot shared by the tests of a module."""

from __future__ import annotations

import subprocess
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from k4s.host.vm import VM, GuestLockup
from tests.conftest import OUT, require, tool

KUBECTL = OUT / "components" / "bin" / "kubectl"
STAGE1 = OUT / "stage1.cpio.xz"
KEYS = OUT / "keys"
PORT = 16443
METRICS_PORT = 16470  # the shared boot's metrics endpoint, forwarded
MANIFEST = """apiVersion: v1
kind: ConfigMap
metadata:
  name: k4s-e2e-autodeploy
  namespace: default
data:
  dropped-in: "yes"
"""


def make_vm(tmp: Path, append: str = "", manifests: list[Path] | None = None, memory: int = 1024) -> VM:
    tool("qemu-system-x86_64")
    for p in (OUT / "vmlinuz", OUT / "initramfs.cpio.zst", KUBECTL):
        require(p.exists(), str(p), "make image")
    return VM(tmp, OUT / "vmlinuz", OUT / "initramfs.cpio.zst", memory=memory, port=PORT, append=append,
              manifests=manifests or [])


def boot(vm: VM, timeout: float = 900, again_on_lockup: bool = True) -> subprocess.Popen[bytes]:
    """Start the VM and wait until its node is Ready; QEMU, running. A guest kernel lockup
    (GuestLockup: the console shows a soft lockup or an RCU stall, never a k4s failure) is
    a warning in the test report, with the stacks the kernel printed, and the machine is
    booted once more; its console is kept as console-lockup.log. Any other failure, or a
    second lockup, fails. On failure QEMU is stopped."""
    proc = vm.start()
    try:
        vm.wait_ready(proc, timeout=timeout, echo=False)
        return proc
    except BaseException as e:
        vm.pull_plug()
        proc.wait(30)
        if not (again_on_lockup and isinstance(e, GuestLockup)):
            raise
        vm.console.replace(vm.out / "console-lockup.log")
        warnings.warn(f"{e.message}; booting {vm.out.name} once more", stacklevel=2)
    return boot(vm, timeout, again_on_lockup=False)


def assert_node_ready(vm: VM) -> None:
    """What a user checks first: kubectl, with the kubeconfig k4s vm wrote, shows the node Ready."""
    r = subprocess.run([str(KUBECTL), "--kubeconfig", str(vm.kubeconfig), "get", "nodes", "-o",
                        "jsonpath={.items[0].status.conditions[?(@.type=='Ready')].status}"],
                       capture_output=True, text=True, timeout=60)
    assert r.stdout == "True", r.stderr


class Cluster:
    def __init__(self, vm: VM) -> None:
        self.vm = vm

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.vm.kubeconfig), "--request-timeout=60s", *args],
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)}: {r.stderr}")
        return r

    def wait_for(self, what: str, probe, timeout: float = 300, every: float = 2) -> str:  # type: ignore[no-untyped-def]
        end = time.monotonic() + timeout
        last = ""
        while time.monotonic() < end:
            try:
                ok, last = probe()
            except (AssertionError, subprocess.TimeoutExpired) as e:
                ok, last = False, str(e)
            if ok:
                return last
            time.sleep(every)
        raise AssertionError(f"{what} not reached in {timeout:.0f}s; last: {last[-2000:]}\n"
                             f"console tail: {self.vm.console.read_text(errors='replace')[-3000:]}")

    def wait_available(self, deployment: str, namespace: str = "default", timeout: float = 300) -> None:
        """Until the Deployment has its one replica available."""
        def probe():  # type: ignore[no-untyped-def]
            r = self.kubectl("-n", namespace, "get", "deploy", deployment, "-o",
                             "jsonpath={.status.availableReplicas}", check=False)
            return r.stdout.strip() == "1", r.stdout + r.stderr
        self.wait_for(f"{deployment} available", probe, timeout)

    def wait_finished(self, pod: str, timeout: float = 300) -> str:
        """Until the pod has Succeeded or Failed; which."""
        def probe():  # type: ignore[no-untyped-def]
            r = self.kubectl("get", "pod", pod, "-o", "jsonpath={.status.phase}", check=False)
            return r.stdout in ("Succeeded", "Failed"), r.stdout + r.stderr
        return self.wait_for(f"pod {pod} finished", probe, timeout)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("vm")
    manifest = tmp / "e2e-autodeploy.yaml"
    manifest.write_text(MANIFEST)
    vm = make_vm(tmp, manifests=[manifest])
    vm.metrics_port = METRICS_PORT
    proc = boot(vm)
    try:
        vm.write_kubeconfig()
        yield Cluster(vm)
    finally:
        if vm.running():
            vm.power_off(120)
        if proc.poll() is None:
            proc.kill()


def build_https_stage1(tmp: Path, min_serial: int = 0) -> tuple[Path, tuple[Path, Path]]:
    """Stage 1 built with a payload CA (and a minimum serial), and a server certificate from that
    CA for 10.0.2.2 (the host, from QEMU's user network): (initrd, (certificate, key))."""
    from tests.conftest import k4s_cmd
    from tests.unit.test_stage1 import tls_pair

    require(STAGE1.exists() and (KEYS / "signing.key").exists(), "stage 1 and its key", "make stage1")
    ca, crt, key = tls_pair(tmp, "payload", ip="10.0.2.2")
    out = tmp / "stage1-https.cpio.xz"
    r = k4s_cmd("mkimage", "--stage1", str(KEYS / "signing.pub"), "--bundle", str(OUT / "stage1" / "k4s"),
                "--out", str(out), "--payload-ca", str(ca), "--min-serial", str(min_serial), timeout=600)
    assert r.returncode == 0, r.stderr
    return out, (crt, key)
