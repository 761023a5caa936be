"""A worker's way to the control plane: a TCP load balancer on 127.0.0.1:6444, as k3s's agent
runs one (pkg/agent/loadbalancer).

The worker's kubelet, kube-proxy, flannel and k4s's own tasks connect to it; it hands each
connection, bytes untouched, to an apiserver that accepts it: the one that accepted last, else
the others in turn. Which apiservers there are it learns from the cluster itself, every
REFRESH seconds: the `kubernetes` Endpoints in `default`, which list each apiserver holding a
live lease. So a server that joins later is used, and one that is gone is skipped once a
connect to it fails, without touching a kubeconfig. The server the worker joined stays in
the list, last, as the way back in if every other one is gone; one the cluster stopped listing
stays for FORGET_AFTER, after those it lists. A server that refused a connection, or whose
connection broke, is tried after the others for a minute.

TLS still ends at an apiserver: each one's certificate names 127.0.0.1 and is checked against
the cluster CA, so the balancer sees ciphertext only and cannot stand in for the control
plane. A connection in flight when its apiserver dies is closed, and the client reconnects,
as it would to a server of its own.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from typing import Any

from k4s import events, log
from k4s.errors import K4sError

HOST, PORT = "127.0.0.1", 6444
URL = f"https://{HOST}:{PORT}"
CONNECT_TIMEOUT = 3.0  # an apiserver that has not accepted by then is taken as gone
SUSPECT_FOR = 60.0  # seconds a server that failed is tried after the others
REFRESH = 30.0
# A server the cluster stops listing is kept, after the listed ones, for this long: an apiserver
# too busy to renew its lease (15 s) drops out of the Endpoints for a while, and a worker that
# forgot it at once had no way left when the one it kept was lost next (the HA e2e, 2026-12-07).
FORGET_AFTER = 600.0
ENDPOINTS = "/api/v1/namespaces/default/endpoints/kubernetes"
CHUNK = 64 * 1024

Address = tuple[str, int]


def hostport(addr: Address) -> str:
    return f"{addr[0]}:{addr[1]}"


def apiservers(endpoints: dict[str, Any]) -> list[Address]:
    """The apiservers the `kubernetes` Endpoints list: each address with the https port."""
    out: list[Address] = []
    for subset in endpoints.get("subsets") or []:
        ports = [p.get("port") for p in subset.get("ports") or [] if p.get("name", "https") == "https"]
        for a in subset.get("addresses") or []:
            if ports and isinstance(a.get("ip"), str) and isinstance(ports[0], int):
                out.append((a["ip"], ports[0]))
    return sorted(set(out))


class Balancer:
    """Listens on (host, port); `servers` first, the joined one (`fallback`) kept last."""

    def __init__(self, fallback: Address, host: str = HOST, port: int = PORT) -> None:
        self.fallback = fallback
        self.servers: list[Address] = []  # what the cluster listed (and fallback, last); until then, fallback alone
        self.current = fallback
        self.failed: dict[Address, float] = {}  # when each server last failed
        self.listed_at: dict[Address, float] = {}  # when the cluster last listed each server
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        try:
            self.sock = socket.create_server((host, port))
        except OSError as e:
            raise K4sError(f"the API load balancer cannot listen on {host}:{port}: {e.strerror}",
                           hint="another program holds the port: k4s's workers keep it for this") from None
        self.address: Address = self.sock.getsockname()[:2]

    def start(self, fetch: Callable[[], dict[str, Any]] | None = None) -> None:
        """Accept connections; with fetch (GET of the Endpoints), learn the apiservers."""
        threading.Thread(target=self._accept, name="apilb", daemon=True).start()
        if fetch is not None:
            threading.Thread(target=self._refresh, args=(fetch,), name="apilb-refresh", daemon=True).start()

    def stop(self) -> None:
        self.stopped.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept(); close alone leaves it listening
        except OSError:
            pass
        self.sock.close()

    def update(self, listed: list[Address]) -> None:
        """What the cluster lists now first, then those it listed within FORGET_AFTER, then fallback."""
        now = time.monotonic()
        with self.lock:
            self.listed_at |= dict.fromkeys(listed, now)
            self.listed_at = {a: t for a, t in self.listed_at.items() if now - t < FORGET_AFTER}
            recent = [a for a in self.listed_at if a not in listed]
            servers = [*(a for a in (*listed, *recent) if a != self.fallback), self.fallback]
            changed, self.servers = servers != self.servers, servers
        if changed:  # and the first time: what the cluster said
            log.event(*events.APILB_SERVERS, servers=",".join(map(hostport, servers)))

    def order(self) -> list[Address]:
        """Who to try: the one that accepted last, then the rest in their order; a server that
        failed within SUSPECT_FOR seconds (refused, or a connection to it broke) goes last."""
        now = time.monotonic()
        with self.lock:
            listed = [self.current, *(a for a in self.servers if a != self.current)]
            failed = {a for a, t in self.failed.items() if now - t < SUSPECT_FOR}
        return [a for a in listed if a not in failed] + [a for a in listed if a in failed]

    def mark_failed(self, addr: Address) -> None:
        with self.lock:
            self.failed[addr] = time.monotonic()

    def dial(self) -> tuple[socket.socket, Address]:
        errors = []
        for addr in self.order():
            try:
                up = socket.create_connection(addr, timeout=CONNECT_TIMEOUT)
            except OSError as e:
                errors.append(f"{hostport(addr)}: {e.strerror or e}")
                self.mark_failed(addr)
                continue
            up.settimeout(None)
            keepalive(up)
            with self.lock:
                moved, self.current = addr != self.current, addr
                self.failed.pop(addr, None)
            if moved:
                log.event("apilb", "server", level="warn", now=hostport(addr), failed="; ".join(errors))
            return up, addr
        raise OSError("; ".join(errors))

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                return  # closed: stopping
            threading.Thread(target=self._serve, args=(client,), name="apilb-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            up, addr = self.dial()
        except OSError as e:
            log.event("apilb", "no-server", level="warn", error=str(e))
            client.close()
            return
        broke: list[bool] = []
        down = threading.Thread(target=lambda: broke.append(pump(up, client)), name="apilb-down", daemon=True)
        down.start()
        pump(client, up)
        down.join()
        client.close()
        up.close()
        if broke and broke[0]:  # reading the server failed (gone, or timed out): others first for a while
            self.mark_failed(addr)

    def _refresh(self, fetch: Callable[[], dict[str, Any]]) -> None:
        while True:
            try:
                if listed := apiservers(fetch()):
                    self.update(listed)
            except (OSError, K4sError, ValueError) as e:
                log.event("apilb", "refresh-failed", level="debug", error=str(e))
            if self.stopped.wait(REFRESH):
                return


def keepalive(s: socket.socket, idle: int = 5, interval: int = 2, count: int = 3, unacked_ms: int = 11000) -> None:
    """An apiserver whose machine lost power sends no reset: TCP finds it gone in about 11 s,
    by keepalives when the connection is idle, and by TCP_USER_TIMEOUT when what was sent
    stays unacknowledged (else the kernel retransmits for 15 minutes). The connection then
    ends and its client dials again. The peer's kernel answers both, however busy the
    apiserver is."""
    s.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for opt, v in ((socket.TCP_KEEPIDLE, idle), (socket.TCP_KEEPINTVL, interval), (socket.TCP_KEEPCNT, count),
                   (socket.TCP_USER_TIMEOUT, unacked_ms)):
        s.setsockopt(socket.IPPROTO_TCP, opt, v)


def pump(src: socket.socket, dst: socket.socket) -> bool:
    """Copy src to dst until src ends (then dst's sending half is shut) or either fails (then
    both are shut: the other direction's pump ends too); True when reading src failed (its
    peer gone or timed out). The caller closes them."""
    src_failed = False
    try:
        while True:
            try:
                data = src.recv(CHUNK)
            except OSError:
                src_failed = True
                raise
            if not data:
                break
            dst.sendall(data)
        dst.shutdown(socket.SHUT_WR)
    except OSError:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
    return src_failed
