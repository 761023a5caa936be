"""The appliance booted in QEMU (TCG): one boot shared by the tests of a module."""

from __future__ import annotations

import re
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from k4s.host.vm import EXIT, VM, Until
from tests.conftest import OUT, k4s_cmd, require, tls_pair, tool

KUBECTL = OUT / "components" / "bin" / "kubectl"
STAGE1 = OUT / "stage1.cpio.xz"
KEYS = OUT / "keys"
UEFI_VARS = OUT / "uefi-vars.fd"  # OVMF's variable store with the keys' PK, KEK and db enrolled (make stage1)
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


def boot_until_exit(vm: VM, timeout: float = 300) -> tuple[int, str]:
    """Boot and wait for QEMU to exit by itself (-no-reboot: a poweroff or a reboot ends it);
    (its status, the console)."""
    with vm.booted(until=EXIT, timeout=timeout) as b:
        return b.reached["rc"], b.console()


def firmware_lines(console: str) -> list[str]:
    """The console without the firmware's terminal escapes, line by line."""
    return [ln.strip() for ln in re.sub(r"\x1b\[[0-9;=?]*[A-Za-z]", "", console).replace("\r", "").splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def boot_side_by_side(vms: list[VM], timeout: float = 300, until: list[Until] | None = None) -> list[tuple[int, str]]:
    """Boot machines that end by themselves (a refusal, then a poweroff) at once, each with a
    forwarded port of its own: [(QEMU's status, the console)], in order. Three such boots took
    17 s together against 32 s one after the other. `until`, one per machine: stop that one at
    this instead (its status is then -1), e.g. a firmware's refusal, after which it would only
    try other boot options."""
    started: list[tuple[VM, subprocess.Popen[bytes]]] = []
    try:
        for vm in vms:
            if not vm.lan_only:
                vm.port = free_port()
            started.append((vm, vm.start()))
        return [(vm.wait(proc, u, timeout=timeout).get("rc", -1), vm.console.read_text(errors="replace"))
                for (vm, proc), u in zip(started, until or [EXIT] * len(vms), strict=True)]
    finally:
        for vm, proc in started:
            vm.stop(proc, clean=False)  # ended by itself, or stopped at a firmware's refusal: no OS to ask


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

    def controllers(self, nodes: tuple[str, ...], lines: int = 30) -> str:
        """What a failed boot leaves to read: who holds the controllers' leases, and the tail of
        each server's controller-manager log (the kubelet serves it, `.../proxy/logs/k4s/`)."""
        out = [self.kubectl("get", "leases", "-n", "kube-system", check=False).stdout]
        for node in nodes:
            log = self.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/logs/k4s/kube-controller-manager.log",
                               check=False)
            out += [f"--- {node}: kube-controller-manager.log", *(log.stdout or log.stderr).splitlines()[-lines:]]
        return "\n".join(out)

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
    with vm.booted():
        vm.write_kubeconfig()
        yield Cluster(vm)


MIN_SERIAL = 100  # the https stage 1 refuses manifests signed with a lower serial (a revoked, older payload)


@pytest.fixture(scope="session")
def https_stage1(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, tuple[Path, Path]]:
    """Stage 1 built with a payload CA and a minimum serial (MIN_SERIAL), and a server certificate
    from that CA for 10.0.2.2 (the host, from QEMU's user network): (initrd, (certificate, key)).
    Built once per test run."""
    tmp = tmp_path_factory.mktemp("https-stage1")
    require(STAGE1.exists() and (KEYS / "signing.key").exists(), "stage 1 and its key", "make stage1")
    ca, crt, key = tls_pair(tmp, "payload", ip="10.0.2.2")
    out = tmp / "stage1-https.cpio.xz"
    r = k4s_cmd("mkimage", "--stage1", str(KEYS / "signing.pub"), "--bundle", str(OUT / "stage1" / "k4s"),
                "--out", str(out), "--payload-ca", str(ca), "--min-serial", str(MIN_SERIAL), timeout=600)
    assert r.returncode == 0, r.stderr
    return out, (crt, key)
