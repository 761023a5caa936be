"""Read-only facts about the host's network: which interface and address the node uses."""

from __future__ import annotations

import ipaddress
import socket

from k4s.errors import K4sError

PROC_ROUTE = "/proc/net/route"


def default_route_interface(route_table: str | None = None) -> str | None:
    """The interface of the IPv4 default route, from /proc/net/route."""
    if route_table is None:
        try:
            with open(PROC_ROUTE, encoding="ascii") as f:
                route_table = f.read()
        except OSError:
            return None
    best: tuple[int, str] | None = None
    for line in route_table.splitlines()[1:]:
        cols = line.split()
        if len(cols) >= 8 and cols[1] == "00000000" and cols[7] == "00000000":
            metric = int(cols[6])
            if best is None or metric < best[0]:
                best = (metric, cols[0])
    return best[1] if best else None


def ipv4_of(interface: str) -> str | None:
    import psutil

    for addr in psutil.net_if_addrs().get(interface, []):
        if addr.family == socket.AF_INET:
            return str(addr.address)
    return None


def node_address(node_ip: str, interface: str) -> tuple[str, str]:
    """(interface, IPv4) the node is reached on: explicit config first, then the default route."""
    import psutil

    if node_ip:
        if not interface:
            for name, addrs in psutil.net_if_addrs().items():
                if any(a.family == socket.AF_INET and a.address == node_ip for a in addrs):
                    interface = name
                    break
        return interface, node_ip
    iface = interface or default_route_interface()
    if iface:
        ip = ipv4_of(iface)
        if ip:
            return iface, ip
        raise K4sError(f"interface {iface} has no IPv4 address",
                       hint="bring it up with an address, or set node-ip")
    for name, addrs in sorted(psutil.net_if_addrs().items()):
        for a in addrs:
            if a.family == socket.AF_INET and not ipaddress.IPv4Address(a.address).is_loopback:
                return name, str(a.address)
    raise K4sError("no interface with an IPv4 address and no default route",
                   hint="configure the network, or set node-ip (k4s.node-ip= on the kernel command line)")
