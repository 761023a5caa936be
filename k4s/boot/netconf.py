"""Boot-time networking: loopback, the node interface by DHCP (pyroute2's client) or static.

DHCP keeps running in a thread for the life of the node, so the lease is renewed.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import os
import sys
import threading
import time
import types
from pathlib import Path

from k4s import events, log
from k4s.config import Config
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

RESOLV_CONF = Path("/etc/resolv.conf")
SYS_NET = Path("/sys/class/net")


def physical_interfaces() -> list[str]:
    """Interfaces backed by a device (not lo, bridges, veths), in name order."""
    try:
        names = sorted(os.listdir(SYS_NET))
    except OSError:
        return []
    return [n for n in names if n != "lo" and (SYS_NET / n / "device").exists()]


def wait_for_interface(name: str | None, timeout: float = 10.0) -> str:
    end = time.monotonic() + timeout
    while True:
        ifaces = physical_interfaces()
        if name and name in ifaces:
            return name
        if not name and ifaces:
            return ifaces[0]
        if time.monotonic() > end:
            want = f"interface {name}" if name else "a network interface"
            raise K4sError(f"{want} did not appear within {timeout:.0f}s (found: {', '.join(ifaces) or 'none'})",
                           hint="load its driver (add the module to the image) or set k4s.interface=")
        time.sleep(0.1)


def link_up(ipr: object, name: str) -> None:
    idx = ipr.link_lookup(ifname=name)  # type: ignore[attr-defined]
    ipr.link("set", index=idx[0], state="up")  # type: ignore[attr-defined]


def wait_for_carrier(name: str, timeout: float = 10.0) -> bool:
    """After link up, before DHCP: a DISCOVER sent before the link has carrier can be lost
    (as systemd-networkd does, wait for it; a link without carrier is logged and tried anyway)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if (SYS_NET / name / "carrier").read_text().strip() == "1":
                return True
        except OSError:
            pass  # reading carrier of a down link is EINVAL
        time.sleep(0.05)
    return False


def write_resolv_conf(servers: list[str], search: str = "") -> None:
    lines = [f"search {search}"] if search else []
    lines += [f"nameserver {s}" for s in servers]
    write_atomic(RESOLV_CONF, "\n".join(lines) + "\n")


def iproute() -> type:
    """pyroute2's IPRoute, imported without the package's __init__: that pulls in all of
    pyroute2 (IPDB, NDB, conntrack: 180 modules, ~6 MiB more RAM for the life of PID 1 and
    0.3 s of start-up on the host). The submodules we use import what they need."""
    if "pyroute2" not in sys.modules:
        spec = importlib.util.find_spec("pyroute2")
        if spec is None or not spec.submodule_search_locations:
            raise K4sError("pyroute2 is not installed", hint="pip install pyroute2 (see pyproject.toml)")
        pkg = types.ModuleType("pyroute2")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["pyroute2"] = pkg
    from pyroute2.iproute.linux import IPRoute

    return IPRoute


def static(cfg: Config, iface: str) -> str:
    IPRoute = iproute()

    addr = ipaddress.IPv4Interface(cfg.ip)
    with IPRoute() as ipr:
        link_up(ipr, iface)
        idx = ipr.link_lookup(ifname=iface)[0]
        ipr.addr("replace", index=idx, address=str(addr.ip), prefixlen=addr.network.prefixlen)
        if cfg.gateway:
            ipr.route("replace", dst="0.0.0.0/0", gateway=cfg.gateway, oif=idx)
    write_resolv_conf(list(cfg.dns))
    return str(addr.ip)


class DHCP:
    """pyroute2's asyncio DHCP client in its own thread; `start` returns once bound."""

    def __init__(self, iface: str, hostname: str, lease_dir: Path) -> None:
        self.iface, self.hostname, self.lease_dir = iface, hostname, lease_dir
        self.bound = threading.Event()
        self.error: BaseException | None = None
        self.ip = ""

    async def _main(self) -> None:
        iproute()
        from pyroute2.dhcp import hooks
        from pyroute2.dhcp.client import AsyncDHCPClient, ClientConfig
        from pyroute2.dhcp.dhcp4socket import AsyncDHCP4Socket
        from pyroute2.dhcp.fsm import State
        from pyroute2.dhcp.leases import JSONFileLease

        put = AsyncDHCP4Socket.put

        async def logged_put(sock: AsyncDHCP4Socket, msg: object) -> object:
            # pyroute2 sends from a background task: an exception there ends DHCP silently
            try:
                return await put(sock, msg)  # type: ignore[arg-type]
            except Exception as e:
                log.event("init", "dhcp-send-failed", level="error", error=f"{type(e).__name__}: {e}")
                raise

        AsyncDHCP4Socket.put = logged_put  # type: ignore[method-assign]

        lease_dir = self.lease_dir

        class RunLease(JSONFileLease):
            @classmethod
            def _get_lease_dir(cls) -> Path:
                return lease_dir

        @hooks.hook(hooks.Trigger.BOUND, hooks.Trigger.RENEWED, hooks.Trigger.REBOUND)
        async def resolv(lease: object) -> None:
            try:
                servers = list(lease.name_servers)  # type: ignore[attr-defined]
            except Exception:
                servers = []
            write_resolv_conf(servers)

        conf = ClientConfig(interface=self.iface, lease_type=RunLease, handle_signals=False, write_pidfile=False,
                            release=False, host_name=self.hostname,
                            hooks=(hooks.configure_ip, hooks.add_default_gw, resolv))
        async with AsyncDHCPClient(conf) as client:
            await client.bootstrap()
            await client.wait_for_state(State.BOUND, timeout=60)
            self.ip = client.lease.ip if client.lease else ""
            self.bound.set()
            await asyncio.Event().wait()  # renew the lease for the life of the node

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # reported to the waiting thread
            self.error = e
            self.bound.set()

    def start(self, timeout: float = 60) -> str:
        self.lease_dir.mkdir(parents=True, exist_ok=True)
        IPRoute = iproute()

        with IPRoute() as ipr:
            link_up(ipr, self.iface)
        if not wait_for_carrier(self.iface):
            log.event("init", "no-carrier", level="warn", interface=self.iface)
        threading.Thread(target=self._run, name="dhcp", daemon=True).start()
        if not self.bound.wait(timeout) or self.error or not self.ip:
            raise K4sError(f"DHCP on {self.iface} got no lease: {self.error or 'timeout'}",
                           hint="check the network, or boot with k4s.ip=ADDRESS/PREFIX k4s.gateway=GW")
        return self.ip


def setup(cfg: Config, run_dir: Path) -> tuple[str, str]:
    """Bring up lo and the node interface; (interface, address)."""
    IPRoute = iproute()

    with IPRoute() as ipr:
        link_up(ipr, "lo")
    iface = wait_for_interface(cfg.interface or None)
    if cfg.ip == "dhcp":
        ip = DHCP(iface, cfg.hostname or cfg.node_name, run_dir / "dhcp").start()
    else:
        ip = static(cfg, iface)
    log.event(*events.NETWORK, interface=iface, ip=ip, mode="dhcp" if cfg.ip == "dhcp" else "static")
    if cfg.mgmt_interface:  # after the static node interface: its DHCP lease sets the default route and DNS
        mgmt = wait_for_interface(cfg.mgmt_interface)
        mip = DHCP(mgmt, cfg.hostname or cfg.node_name, run_dir / "dhcp-mgmt").start()
        log.event(*events.NETWORK, interface=mgmt, ip=mip, mode="dhcp", role="management")
    return iface, ip
