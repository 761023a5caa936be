"""A fleet in QEMU on one host: a server and workers on a virtual lan.

The server's QEMU runs the lan's hub, with one listening loopback socket per other VM
(k4s.host.vm.VM.network); its user network stays its management NIC (eth0), the lan is
eth1. Where any server may lose power (three servers, one control plane), the hub is a
`Switch` of its own instead, and every server connects to it. A worker has one NIC, on the lan, and joins with a join segment from
`k4s token create --segment` (never a token on its command line). The tests and the
bench boot fleets through this module.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from k4s.errors import K4sError
from k4s.host.vm import VM

SERVER_IP = "10.77.0.1"
SERVER_APPEND = f"k4s.interface=eth1 k4s.ip={SERVER_IP}/24 k4s.mgmt-interface=eth0"


def node_name(mac: str) -> str:
    """The node name a machine without k4s.node-name takes: k4s- and its MAC's last three bytes."""
    return "k4s-" + mac.replace(":", "")[-6:].lower()


def server(out: Path, kernel: Path, initrd: Path, lan_ports: tuple[int, ...], memory: int = 1536,
           port: int = 6443) -> VM:
    """The server: the lan's hub, its apiserver forwarded to the host's `port`."""
    return VM(out, kernel, initrd, memory=memory, port=port, lan_ports=tuple(lan_ports), append=SERVER_APPEND)


def worker(out: Path, kernel: Path, initrd: Path, lan_port: int, mac: str, ip: str, join: Path,
           memory: int = 1024, gateway: str = SERVER_IP) -> VM:
    """A lan-only worker: no user network, no forwarded port, no seed; its only secret is its
    join (a segment, or the line `k4s token create` printed), appended to its initrd."""
    return VM(out, kernel, initrd, memory=memory, lan_connect=lan_port, mac=mac, seeded=False,
              append=f"k4s.ip={ip}/24 k4s.gateway={gateway}", join_secret=join)


def token_create(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`k4s token create` against the server, from this source tree."""
    r = subprocess.run([sys.executable, "-m", "k4s", "token", "create", "--kubeconfig", str(kubeconfig), *args],
                       capture_output=True, text=True, timeout=120, cwd=Path(__file__).resolve().parents[2])
    if r.returncode != 0:
        raise K4sError(f"k4s token create failed: {r.stderr.strip()}", hint="is the server up?")
    return r


@dataclass
class Switch:
    """The lan's switch on its own: a QEMU with no machine, only a hub with one listening
    loopback socket per VM, so that the lan outlives any one VM (a server killed and booted
    again connects to its port again)."""

    out: Path
    ports: tuple[int, ...]
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def argv(self) -> list[str]:
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise K4sError("qemu-system-x86_64 not found", hint="run `make setup` (apt-get install qemu-system-x86)")
        out = [qemu, "-machine", "none", "-nodefaults", "-display", "none", "-monitor", "none"]
        for i, port in enumerate(self.ports):
            out += ["-netdev", f"socket,id=lan{i},listen=127.0.0.1:{port}",
                    "-netdev", f"hubport,id=hub{i},hubid=0,netdev=lan{i}"]
        return out

    def __enter__(self) -> Switch:
        self.out.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.out / "switch.stderr", "wb"), start_new_session=True)
        return self

    def __exit__(self, *_: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def server_on(switch_port: int, out: Path, kernel: Path, initrd: Path, mac: str, ip: str, name: str, port: int,
              join: Path | None = None, memory: int = 1536, operator_dir: Path | None = None, cpus: int = 2,
              metrics_port: int = 0, etcd_only: bool = False) -> VM:
    """A server on a `Switch`: its management NIC (eth0, the host's `port` forwarded to its
    apiserver) and the lan (eth1, `ip`). The first has no join and starts a control plane that
    others join (`k4s.cluster-init=1`: its controllers elect a leader); one that joins has the
    join segment `k4s token create --control-plane --segment` wrote, and may run etcd alone
    (`k4s.etcd-only=1`). Servers of one cluster share the operator's directory (the operator CA
    each one trusts)."""
    return VM(out, kernel, initrd, memory=memory, cpus=cpus, port=port, lan_connect=switch_port, lan_mgmt=True,
              mgmt_port=True,
              mac=mac, operator_dir=operator_dir, join_secret=join, metrics_port=metrics_port,
              metrics_guest=ip,
              append=f"k4s.interface=eth1 k4s.ip={ip}/24 k4s.mgmt-interface=eth0 k4s.node-name={name}"
                     + ("" if join else " k4s.cluster-init=1") + (" k4s.etcd-only=1" if etcd_only else ""))
