"""The apiserver client keeps its connection alive, gets past one the server closed, and watches."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k4s.cluster import kubeapi
from tests.conftest import tls_pair


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # noqa: N802
        if "watch=true" in self.path:
            return self.stream()
        self.reply()

    def do_POST(self) -> None:  # noqa: N802
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.reply()

    def reply(self) -> None:
        self.server.requests.append((self.command, self.client_address[1]))  # type: ignore[attr-defined]
        body = json.dumps({"path": self.path}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def stream(self) -> None:
        """A watch as the apiserver sends it: chunked, one JSON event per line, split anywhere."""
        self.server.requests.append((self.command, self.client_address[1]))  # type: ignore[attr-defined]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        lines = b"".join(json.dumps({"type": t, "object": {"metadata": {"name": n}}}).encode() + b"\n"
                         for t, n in (("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")))
        for part in (lines[:10], lines[10:70], lines[70:]):
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
        if "hang" in self.path:  # an apiserver with nothing new to say
            self.wfile.flush()
            time.sleep(20)
        self.wfile.write(b"0\r\n\r\n")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path):  # type: ignore[no-untyped-def]
    ca, crt, key = tls_pair(tmp_path, "api")
    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.requests = []  # type: ignore[attr-defined]
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(crt, key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv, kubeapi.Client("127.0.0.1", srv.server_address[1], kubeapi.tls_context(ca))
    srv.shutdown()


def test_requests_share_one_connection(server) -> None:  # type: ignore[no-untyped-def]
    srv, client = server
    assert [client.json("GET", f"/api/v1/x{i}")["path"] for i in range(3)] == ["/api/v1/x0", "/api/v1/x1", "/api/v1/x2"]
    assert len({port for _, port in srv.requests}) == 1  # one TLS handshake, not three


def test_a_connection_the_server_closed_is_opened_again(server, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    srv, client = server
    client.json("GET", "/a")
    client._local.conn.sock.shutdown(socket.SHUT_RDWR)  # as a server closing an idle connection looks
    assert client.json("GET", "/b")["path"] == "/b"
    # a POST is never sent twice: on a connection idle too long it starts on a fresh one
    monkeypatch.setattr(kubeapi.Client, "IDLE", 0.0)
    assert client.json("POST", "/c", {})["path"] == "/c"
    assert [m for m, _ in srv.requests] == ["GET", "GET", "POST"]
    assert len({port for _, port in srv.requests}) == 3


def test_a_probe_keeps_its_connection_and_opens_a_closed_one_again(server) -> None:  # type: ignore[no-untyped-def]
    srv, client = server
    port = srv.server_address[1]
    url = f"https://127.0.0.1:{port}/readyz"
    assert [kubeapi.get(url, client.ctx, keep=True)[0] for _ in range(3)] == [200, 200, 200]
    assert len({p for _, p in srv.requests}) == 1  # one TLS handshake for three probes
    kubeapi._kept.pool[("https", "127.0.0.1", port)][1].sock.shutdown(socket.SHUT_RDWR)  # the server restarted
    assert kubeapi.get(url, client.ctx, keep=True)[0] == 200
    assert kubeapi.get(url, client.ctx)[0] == 200  # without keep: a connection of its own, closed after
    assert len({p for _, p in srv.requests}) == 3
    kubeapi._kept.pool.pop(("https", "127.0.0.1", port))[1].close()


def test_a_forked_child_opens_its_own_connection(server) -> None:  # type: ignore[no-untyped-def]
    from k4s.sys.process import call_in_child

    srv, client = server
    client.json("GET", "/parent")
    assert call_in_child(lambda: client.json("GET", "/child")["path"], timeout=30) == "/child"
    assert client.json("GET", "/parent-again")["path"] == "/parent-again"
    ports = [port for _, port in srv.requests]
    assert ports[0] == ports[2] != ports[1]


def test_a_watch_yields_each_event_and_ends_with_the_server(server) -> None:  # type: ignore[no-untyped-def]
    srv, client = server
    got = [(e["type"], e["object"]["metadata"]["name"]) for e in client.watch("/apis/x/v1/things", 5)]
    assert got == [("ADDED", "a"), ("MODIFIED", "a"), ("ADDED", "b")]


def test_a_watch_ends_when_stop_is_set_though_the_server_says_nothing(server) -> None:  # type: ignore[no-untyped-def]
    """A stopping apiserver waits for the watches it serves: ours must not wait for it."""
    _, client = server
    stop = threading.Event()
    t0 = time.monotonic()
    got = []
    for e in client.watch("/apis/x/v1/things?hang=1", 60, stop):
        got.append(e)
        if len(got) == 3:
            stop.set()
    assert len(got) == 3 and time.monotonic() - t0 < 5


def test_the_approver_decides_when_a_request_is_made_not_at_its_next_round(monkeypatch) -> None:
    """A new CSR (a watch's ADDED) starts a round at once; INTERVAL is only the fallback."""
    from k4s.cluster import approver

    made = threading.Event()

    class Fake:
        def watch(self, path: str, seconds: int, stop: threading.Event):  # type: ignore[no-untyped-def]
            assert path == approver.CSR_API
            made.wait(10)
            yield {"type": "ADDED", "object": {}}
            time.sleep(10)

    rounds: list[float] = []
    monkeypatch.setattr(approver, "decide_all", lambda *a, **k: rounds.append(time.monotonic()))
    monkeypatch.setattr(approver, "INTERVAL", 60.0)
    stop = threading.Event()
    t = threading.Thread(target=approver.run, args=(Fake, None, stop, "server-1"), daemon=True)
    t.start()
    while not rounds:
        time.sleep(0.01)
    made.set()
    end = time.monotonic() + 5
    while len(rounds) < 2 and time.monotonic() < end:
        time.sleep(0.01)
    stop.set()
    assert len(rounds) == 2 and rounds[1] - rounds[0] < 5  # not the 60 s round
