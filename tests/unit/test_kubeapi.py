"""The apiserver client keeps its connection alive, and gets past one the server closed."""

from __future__ import annotations

import json
import socket
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from k4s.cluster import kubeapi
from tests.conftest import tls_pair


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive

    def do_GET(self) -> None:  # noqa: N802
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


def test_a_forked_child_opens_its_own_connection(server) -> None:  # type: ignore[no-untyped-def]
    from k4s.sys.process import call_in_child

    srv, client = server
    client.json("GET", "/parent")
    assert call_in_child(lambda: client.json("GET", "/child")["path"], timeout=30) == "/child"
    assert client.json("GET", "/parent-again")["path"] == "/parent-again"
    ports = [port for _, port in srv.requests]
    assert ports[0] == ports[2] != ports[1]
