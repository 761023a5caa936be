"""Servers that join a server, on a lan switch of its own: the first boots alone until its
apiserver answers; then `k4s token create --control-plane` writes three joins (each a token and
a certificate key of its own, in the machine's own join segment): the second server and one
whose key is not its join's boot side by side, then a third server that runs etcd alone
(`k4s.etcd-only`). What users check: both Nodes Ready, one etcd of three voting members, one
controller-manager and one scheduler holding the leases, an object written through one server
read through the other, the joins spent and their sealed keys gone, the wrong key refused with
one line; a worker joined through the first server, whose balancer learns the second. Then the
faults: the etcd leader's machine loses power and writes go on through the other server while the
worker's kubelet goes on through its balancer; the lost server boots again, empty, with a join
minted for it, and takes its place back; last, two members
stop answering and the first says in one line that etcd has no majority, refuses a write, and
takes writes again once one returns.

Two full servers and an etcd-only third, not three full ones: under TCG on this machine's two
cores an idle server takes 0.57-0.72 of a host core (measured from QEMU's CPU time), so three
saturate it; the third one's apiserver took 160-210 s to start and readiness flapped on all
three (README, "Three servers"). An etcd member alone is what the quorum needs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest

from k4s import events
from k4s.errors import K4sError
from k4s.host import fleet as fleet_vms
from k4s.host.vm import EXIT, VM, Boot, Console
from tests.conftest import ROOT, k4s_cmd
from tests.e2e.conftest import KUBECTL, Cluster, free_port, make_vm

NAMES = ("server-1", "server-2", "server-3", "server-4", "worker-1")
IPS = ("10.77.0.11", "10.77.0.12", "10.77.0.13", "10.77.0.14", "10.77.0.21")
MACS = ("52:54:00:00:77:11", "52:54:00:00:77:12", "52:54:00:00:77:13", "52:54:00:00:77:14", "52:54:00:00:77:21")
WITNESS = 2  # the third server: etcd alone
BAD = 3  # the fourth machine: a good token, a wrong certificate key
WORKER = 4  # joined through the first server; its balancer learns the second


@dataclass
class HA:
    boots: list[Boot]  # the two full servers
    witness: Boot  # the etcd-only one
    worker: Boot
    joins: list[str]  # what `k4s token create --control-plane` printed for the second server and the witness
    segments: list[Path]
    bad: tuple[int, str]  # the wrong key's machine: QEMU's status, its console
    tmp: Path
    lan: tuple[int, ...]
    stack: ExitStack
    proxied: Path  # the operator's kubeconfig through `k4s api-proxy` (both servers, the first first)
    proxy_log: Path

    @property
    def servers(self) -> list[VM]:
        return [b.vm for b in self.boots]

    def kubectl(self, i: int | None, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """kubectl through server i's apiserver, or (None) through the operator's api-proxy."""
        kubeconfig = self.proxied if i is None else self.servers[i].kubeconfig
        r = subprocess.run([str(KUBECTL), "--kubeconfig", str(kubeconfig), *args],
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 0 or not check, r.stderr
        return r

    def etcd_line(self, i: int) -> str:
        """What `k4s status --remote` says of etcd on server i."""
        vm = self.servers[i]
        r = k4s_cmd("status", "--remote", f"https://127.0.0.1:{vm.metrics_port}", "--kubeconfig", str(vm.kubeconfig))
        return next((ln for ln in r.stdout.splitlines() if ln.startswith("etcd: ")), r.stdout + r.stderr)


def server(tmp: Path, lan: tuple[int, ...], i: int, join: Path | None = None, out: Path | None = None,
           etcd_only: bool = False) -> VM:
    out = out or tmp / NAMES[i]
    base = make_vm(out)
    return fleet_vms.server_on(lan[i], out, base.kernel, base.initrd, MACS[i], IPS[i], NAMES[i],
                               free_port(), join, operator_dir=tmp / "operator", metrics_port=free_port(),
                               etcd_only=etcd_only, **({"memory": 768, "cpus": 1} if etcd_only else {}))


def control_plane_join(first: VM, name: str, segment: Path | None = None, via: str = "") -> str:
    """What `k4s token create --control-plane` prints: with a segment written, the public half;
    without, the whole join. `via`: the server it names (else the one cluster-info names)."""
    r = fleet_vms.token_create(first.kubeconfig, "--control-plane", "--node", name,
                               *(("--segment", str(segment)) if segment else ()), *(("--server", via) if via else ()))
    return r.stdout.strip()


@pytest.fixture(scope="module")
def ha(tmp_path_factory) -> Iterator[HA]:
    tmp = tmp_path_factory.mktemp("ha")
    lan = tuple(free_port() for _ in NAMES)
    with fleet_vms.Switch(tmp, lan), ExitStack() as stack:
        first = server(tmp, lan, 0)
        b1 = stack.enter_context(first.booted(until=events.APISERVER_READY))
        first.write_kubeconfig()
        segments = [tmp / f"{NAMES[i]}.join" for i in (1, WITNESS)]
        joins = [control_plane_join(first, NAMES[i], seg) for i, seg in zip((1, WITNESS), segments, strict=True)]
        whole = control_plane_join(first, NAMES[BAD])  # a good token with another key
        key = whole.split("k4s.certificate-key=")[1].split()[0]
        (tmp / "bad.join").write_text(whole.replace(key, "0" * 64))
        machines = [server(tmp, lan, 1, segments[0]), server(tmp, lan, BAD, tmp / "bad.join"),
                    server(tmp, lan, WITNESS, segments[1], etcd_only=True)]
        started = []
        for vm in machines[:2]:
            started.append(vm.start())
            stack.callback(vm.stop, None, clean=False)  # whichever QEMU runs then (a retry's)
        # follow: a guest kernel that stalls while four machines share two cores boots once more
        bad_boot = machines[1].follow(started[1], EXIT, timeout=300)
        bad = bad_boot.reached["rc"], bad_boot.console()
        # etcd takes one learner at a time: the witness's join waits for the second server's promotion
        started.append(machines[2].start())
        stack.callback(machines[2].stop, None, clean=False)
        first.wait(b1.proc)
        boots = [b1, machines[0].follow(started[0], timeout=600)]
        machines[0].write_kubeconfig()
        proxied, proxy_log = api_proxy(stack, tmp, first, machines[0])
        witness = machines[2].follow(started[2], events.ETCD_READY, timeout=300)
        # a worker, once both apiservers are up (booted beside them, the second one's apiserver
        # missed its 180 s): its balancer starts from the first, which it joined
        fleet_vms.token_create(first.kubeconfig, "--node", NAMES[WORKER], "--segment", str(tmp / "worker.join"))
        wvm = fleet_vms.worker(tmp / NAMES[WORKER], first.kernel, first.initrd, lan[WORKER], MACS[WORKER], IPS[WORKER],
                               tmp / "worker.join", gateway=IPS[0])
        stack.callback(wvm.stop, None, clean=False)
        try:
            worker = wvm.boot(timeout=900)
        except K4sError:
            print(Cluster(first).controllers(NAMES[:2]))  # pytest shows it beside the error
            raise
        yield HA(boots, witness, worker, joins, segments, bad, tmp, lan, stack, proxied, proxy_log)


def api_proxy(stack: ExitStack, tmp: Path, first: VM, second: VM) -> tuple[Path, Path]:
    """The operator's `k4s api-proxy` to both servers' apiservers (the first's kubeconfig, so the
    first first), stopped with the module: (the kubeconfig naming it, its log)."""
    kubeconfig, log = tmp / "operator" / "proxied.kubeconfig", tmp / "api-proxy.log"
    with log.open("w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "k4s", "api-proxy", "--kubeconfig", str(first.kubeconfig),
                                 "--server", f"https://127.0.0.1:{second.port}", "--listen", "127.0.0.1:0",
                                 "--write-kubeconfig", str(kubeconfig)],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env={**os.environ, "K4S_CMDLINE": ""})
    stack.callback(proc.wait, 10)
    stack.callback(proc.terminate)
    end = time.monotonic() + 30
    while "k4s api-proxy: https://" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < end, log.read_text()
        time.sleep(0.2)
    return kubeconfig, log


def test_two_servers_are_ready_with_one_etcd_of_three_voting_members(ha: HA) -> None:
    assert ready_nodes(ha) == dict.fromkeys((*NAMES[:2], NAMES[WORKER]), "True")  # the etcd-only server has no node
    assert ready_nodes(ha, via=None) == ready_nodes(ha)  # and the same through the operator's api-proxy
    # the worker's balancer learned both apiservers from the cluster (the one it joined last)
    learned = ha.worker.events(events.APILB_SERVERS)
    assert learned and learned[-1]["servers"] == f"{IPS[1]}:6443,{IPS[0]}:6443", learned
    # each joiner was added as a learner (etcd counted its members) and promoted once in sync
    assert [e["members"] for e in ha.boots[1].events(events.ETCD_LEARNER)] == [2]
    assert [e["members"] for e in ha.witness.events(events.ETCD_LEARNER)] == [3]
    for b in (ha.boots[1], ha.witness):
        assert f"k4s: etcd member {b.vm.out.name} promoted" in b.console(), b.vm.out.name
    # what the operator sees: `k4s status` on either server lists the three voting members, one the leader
    for i in (0, 1):
        line = ha.etcd_line(i)
        assert line.startswith("etcd: 3 members, 3 voting: ") and line.count("(leader)") == 1, line
        assert all(n in line for n in NAMES[:3]) and "learner" not in line, line
    # one of each controller is active in the cluster, on either server (cluster-init, and the join)
    for lease in ("kube-controller-manager", "kube-scheduler"):
        holder = ha.kubectl(0, "get", "lease", "-n", "kube-system", lease, "-o", "jsonpath={.spec.holderIdentity}")
        assert holder.stdout.split("_")[0] in NAMES[:2], holder.stdout
    # one datastore: written through the second server's apiserver, read through the first's
    ha.kubectl(1, "create", "configmap", "written-on-2", "--from-literal=n=2")
    assert ha.kubectl(0, "get", "configmap", "written-on-2", "-o", "jsonpath={.data.n}").stdout == "2"


def ready_nodes(ha: HA, via: int | None = 0) -> dict[str, str]:
    nodes = json.loads(ha.kubectl(via, "get", "nodes", "-o", "json").stdout)["items"]
    return {n["metadata"]["name"]: {c["type"]: c["status"] for c in n["status"]["conditions"]}["Ready"] for n in nodes}


def worker_lease(ha: HA, via: int) -> str:
    """When the worker's kubelet last renewed its node Lease (every 10 s, through its balancer)."""
    return ha.kubectl(via, "get", "lease", "-n", "kube-node-lease", NAMES[WORKER],
                      "-o", "jsonpath={.spec.renewTime}").stdout


def test_a_server_join_is_secret_spent_and_takes_the_sealed_keys_with_it(ha: HA) -> None:
    for line, i in zip(ha.joins, (1, WITNESS), strict=True):
        # printed: only the public half; the token and the key went into the segment
        assert line.startswith(f"k4s.role=server k4s.server=https://{IPS[0]}:6443 k4s.ca-hash=sha256:"), line
        assert line.endswith(f"k4s.node-name={NAMES[i]}") and "token" not in line and "certificate-key" not in line
    spent = [re.search(rb"k4s\.token=([a-z0-9]{6})\.", p.read_bytes()).group(1).decode()  # type: ignore[union-attr]
             for p in ha.segments]
    listed = k4s_cmd("token", "list", "--kubeconfig", str(ha.servers[0].kubeconfig))
    assert listed.returncode == 0 and not any(t in listed.stdout for t in spent), listed.stdout
    # each token's deletion took its sealed keys and their Role with it (the garbage collector)

    def collected() -> tuple[bool, str]:
        names = ha.kubectl(0, "get", "secrets,roles,rolebindings", "-n", "kube-system", "-o", "name").stdout
        return not any(f"kubeadm-certs-{t}" in names for t in spent), names

    Cluster(ha.servers[0]).wait_for("the sealed keys of spent joins collected", collected, timeout=60)
    for b in (ha.boots[1], ha.witness):  # one cluster identity: the first server's CA
        assert "k4s: cluster CA " + ha.servers[0].ca_hash in b.console()
        assert b.events(events.SECRET_DELETED), "the join segment was not deleted"


def test_a_wrong_certificate_key_is_refused_with_one_line_and_joins_nothing(ha: HA) -> None:
    rc, console = ha.bad
    lines = [ln for ln in console.splitlines() if "the certificate key does not open kubeadm-certs-" in ln]
    assert len(lines) == 1 and lines[0].startswith("k4s init: error:"), console[-3000:]
    assert "k4s: etcd member" not in console and rc == 0  # k4s.on-failure: poweroff
    assert f"node/{NAMES[BAD]}" not in ha.kubectl(0, "get", "nodes", "-o", "name").stdout.split()
    members = [e["members"] for b in (*ha.boots, ha.witness) for e in b.events(events.ETCD_LEARNER)]
    assert members == [2, 3], members  # nothing was added for it


def write_every_second(ha: HA, i: int | None, seconds: float) -> tuple[list[int], float]:
    """A client writing numbered ConfigMaps through server i (None: the operator's api-proxy), one a
    second: (the numbers that were acknowledged, the longest time between two acknowledged writes)."""
    acked, last, gap, n = [], time.monotonic(), 0.0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n += 1
        r = ha.kubectl(i, "create", "configmap", f"tick-{n}", "--request-timeout=10s", check=False)
        if r.returncode == 0:
            now = time.monotonic()
            acked.append(n)
            gap, last = max(gap, now - last), now
        time.sleep(max(0.0, 1.0 - (time.monotonic() - last)))
    return acked, gap


def test_the_etcd_leader_s_machine_loses_power_writes_go_on_and_it_rejoins_empty(ha: HA) -> None:
    """The machine running etcd's leader loses power with no warning (QEMU killed; the second
    server if the witness leads). etcd keeps a majority: the operator's writes through its
    api-proxy go on after an election (the proxy moves to the other server if it used the lost
    one), each one acknowledged kept. The lost server boots again with no disk and
    a join minted for it through the survivor (its old one was spent): it removes its old member
    through the majority, joins again, and its Node is Ready."""
    leader = re.search(r"(server-\d) \(leader\)", ha.etcd_line(0))
    assert leader, ha.etcd_line(0)
    victim = NAMES.index(leader.group(1)) if leader.group(1) in NAMES[:2] else 1
    other = 1 - victim
    renewed = worker_lease(ha, other)
    ha.servers[victim].pull_plug()
    killed = time.monotonic()
    acked, gap = write_every_second(ha, None, 30)
    print(f"etcd leader {leader.group(1)}; writes through the operator's api-proxy after {NAMES[victim]}'s loss: "
          f"{len(acked)} acknowledged, longest gap {gap:.1f} s")
    assert len(acked) >= 10, acked
    names = ha.kubectl(other, "get", "configmaps", "-o", "name").stdout.split()
    assert all(f"configmap/tick-{n}" in names for n in acked), names
    # the proxy started on the first server: it moved to the second only if the first was lost
    moved_to = re.findall(r"component=apilb event=server .*now=(\S+)", ha.proxy_log.read_text())
    assert moved_to == ([f"127.0.0.1:{ha.servers[other].port}"] if victim == 0 else []), ha.proxy_log.read_text()
    # the worker's kubelet renews its Lease again, through its balancer, whichever server it used
    end = time.monotonic() + 120
    while worker_lease(ha, other) == renewed:
        assert time.monotonic() < end, "the worker's kubelet did not renew its Lease after the server's loss"
        time.sleep(2)
    print(f"the worker's Lease renewed {time.monotonic() - killed:.1f} s after {NAMES[victim]}'s loss")
    assert ready_nodes(ha, other)[NAMES[WORKER]] == "True"
    moved = [e for e in ha.worker.events() if e.get("component") == "apilb" and e.get("event") == "server"]
    if NAMES[victim] == NAMES[0]:  # the server it joined and used: its balancer moved to the other
        assert moved and moved[-1]["now"] == f"{IPS[other]}:6443", moved
    segment = ha.tmp / f"{NAMES[victim]}-again.join"
    control_plane_join(ha.servers[other], NAMES[victim], segment, via=f"https://{IPS[other]}:6443")
    again = server(ha.tmp, ha.lan, victim, segment, out=ha.tmp / f"{NAMES[victim]}-again")
    t = time.monotonic()
    ha.stack.callback(again.stop, None, clean=False)
    ha.boots[victim] = again.boot(timeout=900)
    print(f"{NAMES[victim]} booted again to Ready in {time.monotonic() - t:.1f} s")
    again.write_kubeconfig()
    console = ha.boots[victim].console()
    assert "event=member-removed" in console and f"k4s: etcd member {NAMES[victim]} promoted" in console
    line = ha.etcd_line(other)
    assert line.startswith("etcd: 3 members, 3 voting: ") and "learner" not in line, line
    # what was written while it was gone is there through it
    assert ha.kubectl(victim, "get", "configmap", f"tick-{acked[-1]}", "-o", "name").returncode == 0


def test_without_a_majority_a_server_says_so_refuses_writes_and_takes_them_once_one_returns(ha: HA) -> None:
    """Last in the module: two of the three members stop answering (their machines paused). The
    first server's console says so in one line and a write through it fails; once one of them
    answers again, writes are accepted."""
    for b in (ha.boots[1], ha.witness):
        b.vm.qmp_command("stop")
    lost = f"k4s: etcd: 2 of 3 members unreachable ({NAMES[1]}, {NAMES[2]}): writes refused until one returns"
    lost_alt = f"k4s: etcd: 2 of 3 members unreachable ({NAMES[2]}, {NAMES[1]}): writes refused until one returns"
    first = ha.servers[0]
    end = time.monotonic() + 180
    while not any(x in first.console.read_text(errors="replace") for x in (lost, lost_alt)):
        assert time.monotonic() < end, first.console.read_text(errors="replace")[-3000:]
        time.sleep(1)
    r = ha.kubectl(0, "create", "configmap", "without-a-majority", "--request-timeout=20s", check=False)
    assert r.returncode != 0, r.stdout
    ha.witness.vm.qmp_command("cont")
    first.wait(ha.boots[0].proc, Console("k4s: etcd: a majority of members answers again: writes accepted"),
               timeout=180)
    assert ha.kubectl(0, "create", "configmap", "with-a-majority-again", "--request-timeout=30s").returncode == 0
