"""Every check before anything starts, so a failure leaves nothing running:
root, the binaries, cgroup v2, and each component's ports (from its module)."""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path

from k4s.cluster import components
from k4s.cluster.node import Node
from k4s.errors import K4sError


def cgroup2_mounted(mounts: str | None = None) -> bool:
    if mounts is None:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            return False
    return any(line.split()[1:3] == ["/sys/fs/cgroup", "cgroup2"] for line in mounts.splitlines() if line.strip())


def port_owner(port: int) -> str:
    import psutil

    try:
        for c in psutil.net_connections("tcp"):
            if c.laddr and c.laddr.port == port and c.status == psutil.CONN_LISTEN and c.pid:
                return f" by pid {c.pid} ({psutil.Process(c.pid).name()})"
    except (psutil.Error, OSError):
        pass
    return ""


def check_port(host: str, port: int, who: str) -> None:
    """Bind as the component's listener will (SO_REUSEADDR: a TIME_WAIT socket is no owner)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            if e.errno == errno.EADDRINUSE:
                raise K4sError(f"port {port} ({who}) is already in use{port_owner(port)}",
                               hint="stop the other server (another k4s or Kubernetes?) or change the port") from None
            raise


def ports(node: Node, names: list[str]) -> list[tuple[str, str, int]]:
    """(component, address, port) for every listener of the named components."""
    return [(n, host, port) for n in names for host, port in components.module(n).ports(node.cfg)]


def preflight(node: Node, names: list[str]) -> None:
    if os.geteuid() != 0:
        raise K4sError("k4s server must run as root", hint="run it with sudo")
    for b in components.binaries(names):
        p = node.bin(b)
        if not os.access(p, os.X_OK):
            raise K4sError(f"component binary {p} is missing or not executable",
                           hint="build the components (make components) and set bin-dir to out/components/bin")
    if "kubelet" in names and not cgroup2_mounted():
        raise K4sError("cgroup v2 is not mounted at /sys/fs/cgroup; kubelet requires it",
                       hint="boot the host with systemd.unified_cgroup_hierarchy=1, or run --control-plane-only")
    for name, host, port in ports(node, names):
        check_port(host, port, name)
