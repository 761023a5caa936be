"""A node with a data disk keeps what matters: one qcow2 disk through three boots.

Boot 1 formats the blank disk (k4s.data-format=1) and runs a Deployment, a Secret and a
StatefulSet whose volume (the default StorageClass, local-path) holds data. The power button
ends it. Boot 2, without data-format, has the same CA (same pin), the same Node, the objects
and the volume's data. A write the API acknowledged is then followed at once by QEMU killed
-9 (a power cut): boot 3 has it. The tests run in this order and share the disk.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from k4s import events, log
from k4s.events import Event
from k4s.host.vm import VM, Boot
from tests.conftest import tool
from tests.e2e.conftest import Cluster, boot_until_exit, make_vm

DATA = "k4s.data=LABEL=K4SDATA"
STATEFULSET = """apiVersion: apps/v1
kind: StatefulSet
metadata: {name: keeper}
spec:
  serviceName: keeper
  replicas: 1
  selector: {matchLabels: {app: keeper}}
  template:
    metadata: {labels: {app: keeper}}
    spec:
      terminationGracePeriodSeconds: 1
      containers:
      - name: c
        image: k4s.local/busybox:1.36
        imagePullPolicy: Never
        command: ["sh", "-c", "test -f /data/first || head -c 8 /dev/urandom | od -An -tx1 | tr -d ' ' > /data/first;
          echo boot >> /data/boots; echo first=$(cat /data/first) boots=$(wc -l < /data/boots); sleep 100000"]
        volumeMounts: [{name: data, mountPath: /data}]
  volumeClaimTemplates:
  - metadata: {name: data}
    spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 64Mi}}}
"""


@dataclass
class Node:
    vm: VM
    cluster: Cluster
    last: Boot | None = None

    def boot(self, append: str) -> None:
        self.vm.append, self.vm.ca_hash = append, ""
        self.last = self.vm.boot()
        self.vm.write_kubeconfig()

    def events(self, which: Event) -> list[dict]:
        assert self.last is not None
        return self.last.events(which)

    def keeper_line(self, boot: int) -> str:
        """The StatefulSet pod's log line in this boot (its container restarts once per boot)."""
        def probe():  # type: ignore[no-untyped-def]
            r = self.cluster.kubectl("get", "pod", "keeper-0", "-o",
                                     "jsonpath={.status.containerStatuses[0].restartCount}", check=False)
            if r.stdout.strip() != str(boot - 1):
                return False, r.stdout + r.stderr
            r = self.cluster.kubectl("logs", "keeper-0", check=False)
            return "first=" in r.stdout, r.stdout + r.stderr
        return self.cluster.wait_for(f"keeper-0 running in boot {boot}", probe, timeout=400).strip().splitlines()[-1]


@pytest.fixture(scope="module")
def node(tmp_path_factory) -> Iterator[Node]:
    tmp = tmp_path_factory.mktemp("datadisk")
    vm = make_vm(tmp, memory=1024)
    vm.disk = tmp / "data.qcow2"
    n = Node(vm, Cluster(vm))
    try:
        yield n
    finally:
        vm.stop(n.last.proc if n.last else None)


@pytest.fixture(scope="module")
def first(node: Node) -> dict[str, str]:
    """Boot 1 on a blank disk, with the workloads; what the later boots must find."""
    node.boot(f"{DATA} k4s.data-format=1")
    c = node.cluster
    c.kubectl("create", "secret", "generic", "kept", "--from-literal=word=persistent")
    c.kubectl("create", "deployment", "sleeper", "--image=k4s.local/busybox:1.36", "--", "sleep", "100000")
    c.kubectl("patch", "deployment", "sleeper", "--type=json", "-p",
              '[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]')
    stateful = node.vm.out / "keeper.yaml"
    stateful.write_text(STATEFULSET)
    c.kubectl("apply", "-f", str(stateful))
    line = node.keeper_line(1)
    node.cluster.wait_available("sleeper", timeout=400)
    uid = c.kubectl("get", "node", "-o", "jsonpath={.items[0].metadata.uid}").stdout
    return {"ca": node.vm.ca_hash, "keeper": line.split()[0], "node-uid": uid}


def test_a_blank_disk_is_formatted_and_takes_the_state(node: Node, first: dict[str, str]) -> None:
    [fmt] = node.events(events.DATA_FORMATTED)
    [mounted] = node.events(events.DATA_MOUNTED)
    assert fmt["device"] == mounted["device"] == "/dev/vda"
    assert mounted["at"] == "/var/lib/k4s" and mounted["label"] == "K4SDATA"
    pvc = json.loads(node.cluster.kubectl("get", "pvc", "data-keeper-0", "-o", "json").stdout)
    assert pvc["status"]["phase"] == "Bound" and pvc["spec"]["storageClassName"] == "local-path"
    assert first["keeper"].startswith("first=")


def test_after_the_power_button_everything_comes_back(node: Node, first: dict[str, str]) -> None:
    assert node.vm.power_off(180), "the node did not power itself off"
    node.boot(DATA)  # no data-format: the disk is found by its label
    assert node.events(events.DATA_MOUNTED) and not node.events(events.DATA_FORMAT)
    # the airgap images are on the disk since boot 1: none is imported again
    assert {e["file"] for e in node.events(events.IMAGES_PRESENT)} >= {"busybox.tar", "pause.tar"}
    assert not node.events(events.IMAGES_IMPORTED)
    assert node.vm.ca_hash == first["ca"], "the cluster CA changed across the reboot"
    c = node.cluster
    assert c.kubectl("get", "node", "-o", "jsonpath={.items[0].metadata.uid}").stdout == first["node-uid"]
    word = c.kubectl("get", "secret", "kept", "-o", "jsonpath={.data.word}").stdout
    assert base64.b64decode(word) == b"persistent"
    node.cluster.wait_available("sleeper", timeout=400)
    line = node.keeper_line(2)
    assert line.split() == [first["keeper"], "boots=2"], "the volume's data changed across the reboot"


def test_a_write_acknowledged_before_a_power_cut_survives_it(node: Node, first: dict[str, str]) -> None:
    node.cluster.kubectl("create", "configmap", "acked", "--from-literal=at=cut")  # returns once etcd committed it
    node.vm.pull_plug()
    node.boot(DATA)
    assert node.vm.ca_hash == first["ca"]
    assert node.cluster.kubectl("get", "configmap", "acked", "-o", "jsonpath={.data.at}").stdout == "cut"
    # the pod's own appends were never fsynced: what the last boot wrote may be lost, the rest not
    line = node.keeper_line(3)
    assert line.split()[0] == first["keeper"] and line.split()[1] in ("boots=2", "boots=3"), line


def test_a_disk_holding_something_else_is_refused_and_left_as_it_was(tmp_path: Path) -> None:
    """k4s.data-format=1 on a disk with a partition table: one line, poweroff, not a byte changed."""
    tool("qemu-img")
    raw = tmp_path / "other.raw"
    head = bytearray(1 << 20)
    head[446:462] = bytes([0, 1, 1, 0, 0x83, 0xFE, 0xFF, 0xFF]) + (2048).to_bytes(4, "little") + (8192).to_bytes(4, "little")
    head[510:512] = b"\x55\xaa"
    raw.write_bytes(bytes(head) + bytes(7 << 20))
    vm = make_vm(tmp_path / "vm")
    vm.port = 16445  # the module's node is still up on the usual port
    vm.disk = tmp_path / "other.qcow2"
    subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(vm.disk)], check=True)
    vm.append = "k4s.data=/dev/vda k4s.data-format=1"
    rc, console = boot_until_exit(vm)
    assert rc == 0, "the node did not power off after the error"
    [fatal] = [e for e in log.read_events(vm.events) if e.get("event") == events.FATAL]
    assert "holds something other than an ext4 filesystem" in fatal["error"], fatal
    lines = [ln for ln in console.splitlines() if "something other than" in ln]
    assert lines and "hint:" in lines[0], lines
    after = tmp_path / "after.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(vm.disk), str(after)], check=True)
    assert after.read_bytes() == raw.read_bytes()
