"""A worker's API load balancer: every connection to an apiserver that accepts it, the one that
accepted last first; which apiservers there are, from the `kubernetes` Endpoints."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from k4s.cluster import apilb
from k4s.errors import K4sError
from tests.conftest import ROOT, k4s_cmd, tls_pair


def each_connection(srv: socket.socket, handle: Callable[[socket.socket], None]) -> None:
    """Accept on srv until it is shut, handling each connection in turn, in a thread of its own."""
    def serve() -> None:
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            handle(c)

    threading.Thread(target=serve, daemon=True).start()


@contextmanager
def echo_server(reply: bytes) -> Iterator[apilb.Address]:
    """A stand-in apiserver: reads until the client has sent everything, then answers and hangs up."""
    srv = socket.create_server(("127.0.0.1", 0))

    def answer(c: socket.socket) -> None:
        with c:
            got = b""
            while data := c.recv(1024):
                got += data
            c.sendall(reply + b":" + got)

    each_connection(srv, answer)
    try:
        yield srv.getsockname()[:2]
    finally:
        srv.shutdown(socket.SHUT_RDWR)  # wakes accept(): a closed socket alone keeps listening
        srv.close()


RESERVED: list[socket.socket] = []


@pytest.fixture(autouse=True, scope="module")
def _release_reserved() -> Iterator[None]:
    yield
    while RESERVED:
        RESERVED.pop().close()


def closed_port() -> apilb.Address:
    """An address that refuses connections: bound (so no other test's server gets it), not listening."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    RESERVED.append(s)
    return s.getsockname()[:2]


def ask(lb: apilb.Balancer, msg: bytes = b"GET") -> bytes:
    with socket.create_connection(lb.address, timeout=10) as c:
        c.sendall(msg)
        c.shutdown(socket.SHUT_WR)  # a half-close: the answer must still come back
        out = b""
        try:
            while data := c.recv(1024):
                out += data
        except ConnectionResetError:  # closed with our bytes unread: a reset, as good as an end
            assert not out
        return out


@pytest.fixture
def balancer() -> Iterator[apilb.Balancer]:
    lb = apilb.Balancer(closed_port(), port=0)
    lb.start()
    yield lb
    lb.stop()


def test_a_connection_goes_to_a_server_that_accepts_and_stays_there(balancer: apilb.Balancer) -> None:
    with echo_server(b"two") as two, echo_server(b"three") as three:
        balancer.update([two, three])
        assert balancer.servers[-1] == balancer.fallback  # the joined server is kept, last
        assert ask(balancer) == b"two:GET"  # the joined one refused: the next one took it
        assert balancer.current == two and balancer.order()[0] == two
        assert ask(balancer, b"again") == b"two:again"
    with echo_server(b"back") as back:
        balancer.update([back])
        assert ask(balancer) == b"back:GET"  # the one that answered last is gone: the next


def test_no_server_that_accepts_closes_the_connection(balancer: apilb.Balancer) -> None:
    balancer.update([closed_port()])
    assert ask(balancer) == b""


def test_a_taken_port_is_one_line() -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        with pytest.raises(K4sError, match="cannot listen on 127.0.0.1:") as e:
            apilb.Balancer(closed_port(), port=taken.getsockname()[1])
    assert "hint" not in str(e.value) and e.value.hint


@pytest.mark.parametrize("doc, servers", [
    ({"subsets": [{"addresses": [{"ip": "10.77.0.12"}, {"ip": "10.77.0.11"}], "ports": [{"name": "https", "port": 6443}]}]},
     [("10.77.0.11", 6443), ("10.77.0.12", 6443)]),
    ({"subsets": [{"addresses": [{"ip": "10.77.0.11"}], "ports": [{"port": 6443}]}]}, [("10.77.0.11", 6443)]),
    ({}, []), ({"subsets": None}, []),
    ({"subsets": [{"addresses": [{"ip": 5}], "ports": [{"port": "x"}]}]}, []),  # hostile shapes: nothing
    ({"subsets": [{"addresses": [{"ip": "10.0.0.1"}], "ports": [{"name": "metrics", "port": 1}]}]}, []),
])
def test_the_apiservers_come_from_the_kubernetes_endpoints(doc: dict, servers: list) -> None:
    assert apilb.apiservers(doc) == servers


def test_the_balancer_learns_the_apiservers_from_the_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(apilb, "REFRESH", 0.05)
    lb = apilb.Balancer(("10.77.0.11", 6443), port=0)
    doc = {"subsets": [{"addresses": [{"ip": "10.77.0.11"}, {"ip": "10.77.0.13"}], "ports": [{"port": 6443}]}]}
    fetched = threading.Event()

    def fetch() -> dict:
        fetched.set()
        return doc

    lb.start(fetch)
    try:
        assert fetched.wait(5)
        for _ in range(100):
            if lb.servers == [("10.77.0.13", 6443), ("10.77.0.11", 6443)]:
                break
            threading.Event().wait(0.05)
        assert lb.servers == [("10.77.0.13", 6443), ("10.77.0.11", 6443)]
    finally:
        lb.stop()


def test_a_server_whose_connection_broke_is_tried_after_the_others(balancer: apilb.Balancer) -> None:
    """A server's machine gone mid-connection shows as a failed read (a reset here, a TCP timeout
    there): the client's next connection goes to another server first, not back to it."""
    import struct

    breaking = socket.create_server(("127.0.0.1", 0))

    def reset(c: socket.socket) -> None:
        c.recv(1024)
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
        c.close()

    each_connection(breaking, reset)
    try:
        with echo_server(b"steady") as steady:
            balancer.update([breaking.getsockname()[:2], steady])
            with socket.create_connection(balancer.address, timeout=10) as c:  # lands on the breaking one
                c.sendall(b"GET")
                try:
                    assert c.recv(1024) == b""
                except ConnectionResetError:
                    pass
            assert balancer.current == breaking.getsockname()[:2]
            for _ in range(50):  # the pumps end just after the client sees the close
                if balancer.order()[0] == steady:
                    break
                threading.Event().wait(0.05)
            assert ask(balancer) == b"steady:GET"
    finally:
        breaking.shutdown(socket.SHUT_RDWR)
        breaking.close()


# --- the operator's proxy (k4s api-proxy): the same balancer on the operator's host ------------------

def operator_kubeconfig(tmp_path: Path, server: str) -> Path:
    """A kubeconfig with embedded credentials, as `k4s vm` writes (a CA and a cert from it)."""
    from k4s.cluster import pki

    ca, crt, key = tls_pair(tmp_path, "op")
    path = tmp_path / "kubeconfig"
    path.write_text(pki.kubeconfig_text("k4s-operator", server, crt.read_bytes(), key.read_bytes(), ca.read_bytes()))
    return path


def test_the_operator_s_proxy_writes_a_kubeconfig_naming_it_and_passes_to_a_server_that_answers(tmp_path: Path) -> None:
    import yaml

    gone = closed_port()
    kubeconfig = operator_kubeconfig(tmp_path, f"https://{apilb.hostport(gone)}")
    out = tmp_path / "ha" / "kubeconfig"
    out.parent.mkdir()
    with echo_server(b"second") as second:
        proc = subprocess.Popen([sys.executable, "-m", "k4s", "api-proxy", "--kubeconfig", str(kubeconfig),
                                 "--server", f"https://{apilb.hostport(second)}", "--listen", "127.0.0.1:0",
                                 "--write-kubeconfig", str(out)], cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                env={**os.environ, "K4S_CMDLINE": ""})
        try:
            first = proc.stderr.readline() if proc.stderr else ""  # once it listens and the copy is written
            assert first.startswith("k4s api-proxy: https://127.0.0.1:"), first
            written, given = yaml.safe_load(out.read_text()), yaml.safe_load(kubeconfig.read_text())
            url = written["clusters"][0]["cluster"]["server"]
            assert out.stat().st_mode & 0o777 == 0o600 and first.split()[2] == url
            # only the address changed: the CA and the user's credentials are the kubeconfig's
            written["clusters"][0]["cluster"]["server"] = given["clusters"][0]["cluster"]["server"]
            assert written == given
            u = urllib.parse.urlsplit(url)
            with socket.create_connection((u.hostname, u.port), timeout=10) as c:
                c.sendall(b"GET")
                c.shutdown(socket.SHUT_WR)
                got = b""
                while data := c.recv(1024):
                    got += data
            assert got == b"second:GET"  # the kubeconfig's server refused: the next one answered
        finally:
            proc.terminate()
            rc = proc.wait(10)
    assert rc == 0 and f"now={apilb.hostport(second)}" in (proc.stderr.read() if proc.stderr else "")


@pytest.mark.parametrize("args, error", [
    (["--server", "http://10.0.0.5:6443"], "server 'http://10.0.0.5:6443' is not https://HOST:PORT"),
    (["--server", "https://10.0.0.5"], "server 'https://10.0.0.5' is not https://HOST:PORT"),
    (["--listen", "localhost"], "listen address 'localhost' is not HOST:PORT"),
    (["--write-kubeconfig", "KUBECONFIG"], "is the kubeconfig it reads"),
    (["--write-kubeconfig", "/proc/k4s/kubeconfig"], "cannot write /proc/k4s/kubeconfig"),
])
def test_bad_proxy_arguments_are_one_line(tmp_path: Path, args: list[str], error: str) -> None:
    kubeconfig = operator_kubeconfig(tmp_path, "https://127.0.0.1:6443")
    args = [str(kubeconfig) if a == "KUBECONFIG" else a for a in args]
    r = k4s_cmd("api-proxy", "--kubeconfig", str(kubeconfig), "--listen", "127.0.0.1:0", *args, timeout=30)
    lines = r.stderr.strip().splitlines()
    assert r.returncode != 0 and len(lines) == 1 and error in lines[0] and "hint:" in lines[0], r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kubeconfig", "op-ca.crt", "op.crt", "op.key"]


def test_a_server_the_cluster_stops_listing_is_kept_after_the_listed_ones_for_a_while(monkeypatch: pytest.MonkeyPatch) -> None:
    """An apiserver too busy to renew its lease drops out of the Endpoints for a while: the balancer
    still has it, after the listed ones, should the one it keeps be lost next."""
    joined, second, third = ("10.77.0.11", 6443), ("10.77.0.12", 6443), ("10.77.0.13", 6443)
    lb = apilb.Balancer(joined, port=0)
    try:
        lb.update([joined, second])
        lb.update([joined, third])
        assert lb.servers == [third, second, joined]
        monkeypatch.setattr(apilb, "FORGET_AFTER", 0.0)  # and once it has been gone long enough, forgotten
        lb.update([joined, third])
        assert lb.servers == [third, joined]
    finally:
        lb.stop()
