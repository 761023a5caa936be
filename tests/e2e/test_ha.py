"""Three servers, one control plane, on a lan switch of its own: the first boots alone, the
others join it with the join `k4s token create --control-plane` writes (a token and a
certificate key, in each machine's own join segment), one after another (two host cores
cannot carry three control-plane starts at once under TCG). What users check: three Nodes
Ready, one etcd of three voting members, an object written through one server read through
another, the joins spent, and a wrong certificate key refused with one line."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from k4s import events
from k4s.host import fleet as fleet_vms
from k4s.host.vm import VM, Boot
from tests.conftest import k4s_cmd
from tests.e2e.conftest import KUBECTL, boot_until_exit, free_port, make_vm

NAMES = ("server-1", "server-2", "server-3")
IPS = ("10.77.0.11", "10.77.0.12", "10.77.0.13")
MACS = ("52:54:00:00:77:11", "52:54:00:00:77:12", "52:54:00:00:77:13")
CPUS = 1  # three VMs of 2 vCPUs on 2 host cores: a vCPU descheduled mid-spinlock stalls its sibling
BAD = ("server-4", "10.77.0.14", "52:54:00:00:77:14")


@dataclass
class HA:
    boots: list[Boot]
    joins: list[str]  # what `k4s token create --control-plane` printed for servers 2 and 3
    lan: tuple[int, ...]
    tmp: Path

    @property
    def servers(self) -> list[VM]:
        return [b.vm for b in self.boots]

    def kubectl(self, i: int, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(KUBECTL), "--kubeconfig", str(self.servers[i].kubeconfig), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 or not check, r.stderr
        return r


def server(ha_tmp: Path, lan: tuple[int, ...], i: int, join: Path | None = None) -> VM:
    base = make_vm(ha_tmp / NAMES[i])
    return fleet_vms.server_on(lan[i], ha_tmp / NAMES[i], base.kernel, base.initrd, MACS[i], IPS[i], NAMES[i],
                               free_port(), join, operator_dir=ha_tmp / "operator", cpus=CPUS)


def control_plane_join(first: VM, name: str, segment: Path | None = None) -> str:
    """What `k4s token create --control-plane` prints: with a segment written, the public half;
    without, the whole join."""
    r = fleet_vms.token_create(first.kubeconfig, "--control-plane", "--node", name,
                               *(("--segment", str(segment)) if segment else ()))
    return r.stdout.strip()


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> Iterator[HA]:
    tmp = tmp_path_factory.mktemp("ha")
    lan = tuple(free_port() for _ in range(4))
    with fleet_vms.Switch(tmp, lan), ExitStack() as stack:
        first = server(tmp, lan, 0)
        boots = [stack.enter_context(first.booted())]
        first.write_kubeconfig()
        joins = []
        for i in (1, 2):
            joins.append(control_plane_join(first, NAMES[i], tmp / f"{NAMES[i]}.join"))
            vm = server(tmp, lan, i, tmp / f"{NAMES[i]}.join")
            boots.append(stack.enter_context(vm.booted()))
            vm.write_kubeconfig()
        yield HA(boots, joins, lan, tmp)


def test_three_servers_are_ready_with_one_etcd_of_three_voting_members(ha: HA) -> None:
    nodes = json.loads(ha.kubectl(2, "get", "nodes", "-o", "json").stdout)["items"]
    ready = {n["metadata"]["name"]: {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] for n in nodes}
    assert ready == dict.fromkeys(NAMES, "True"), ready
    # each joiner was added as a learner and promoted: etcd counted 2, then 3 members
    for i, members in ((1, 2), (2, 3)):
        learner = ha.boots[i].events(events.ETCD_LEARNER)
        assert [e["members"] for e in learner] == [members], learner
        assert f"k4s: etcd member {NAMES[i]} promoted" in ha.servers[i].console.read_text(errors="replace")
    # one datastore: written through the third server's apiserver, read through the first's and second's
    ha.kubectl(2, "create", "configmap", "written-on-3", "--from-literal=n=3")
    for i in (0, 1):
        assert ha.kubectl(i, "get", "configmap", "written-on-3", "-o", "jsonpath={.data.n}").stdout == "3"


def test_a_server_join_is_secret_spent_and_takes_the_sealed_keys_with_it(ha: HA) -> None:
    for line, name in zip(ha.joins, NAMES[1:], strict=True):
        # printed: only the public half; the token and the key went into the segment
        assert line.startswith(f"k4s.role=server k4s.server=https://{IPS[0]}:6443 k4s.ca-hash=sha256:"), line
        assert line.endswith(f"k4s.node-name={name}") and "token" not in line and "certificate-key" not in line
    listed = k4s_cmd("token", "list", "--kubeconfig", str(ha.servers[0].kubeconfig))
    assert listed.returncode == 0 and "control-plane" not in listed.stdout, listed.stdout
    # the token's deletion took kubeadm-certs with it (the garbage collector, its owner gone)
    ha_cluster = ha.kubectl(0, "get", "secret", "-n", "kube-system", "kubeadm-certs", check=False)
    assert "NotFound" in ha_cluster.stderr, ha_cluster.stdout + ha_cluster.stderr
    for vm in ha.servers[1:]:  # one cluster identity: the first server's CA
        assert "k4s: cluster CA " + ha.servers[0].ca_hash in vm.console.read_text(errors="replace")
    for b in ha.boots[1:]:
        assert b.events(events.SECRET_DELETED), "the join segment was not deleted"


def test_a_wrong_certificate_key_is_refused_with_one_line_and_joins_nothing(ha: HA) -> None:
    # a good token, with another key than the one the servers sealed its upload with
    whole = control_plane_join(ha.servers[0], BAD[0])
    key = whole.split("k4s.certificate-key=")[1].split()[0]
    bad = ha.tmp / "bad.words"
    bad.write_text(whole.replace(key, "0" * 64))
    base = make_vm(ha.tmp / BAD[0])
    vm = fleet_vms.server_on(ha.lan[3], ha.tmp / BAD[0], base.kernel, base.initrd, BAD[2], BAD[1], BAD[0],
                             free_port(), bad, operator_dir=ha.tmp / "operator")
    rc, console = boot_until_exit(vm, timeout=300)
    assert "the certificate key does not open kubeadm-certs" in console, console[-3000:]
    assert "k4s: etcd member" not in console and rc == 0
    nodes = ha.kubectl(0, "get", "nodes", "-o", "name").stdout.split()
    assert f"node/{BAD[0]}" not in nodes, nodes
