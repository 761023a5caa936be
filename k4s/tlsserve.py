"""HTTPS servers whose TLS handshakes never block the accept loop.

`ssl.SSLContext.wrap_socket` on a listening socket does each handshake inside
accept(): one client that connects and never finishes its handshake stops every
other. Here each connection is wrapped without a handshake, and the handshake
runs on the connection's own thread, with its own timeout, at most
`max_connections` at once (one more is closed at once). The metrics endpoint and
`netboot serve` both serve this way.
"""

from __future__ import annotations

import http.server
import socketserver
import ssl
import threading
from collections.abc import Callable
from typing import Any

HANDSHAKE_TIMEOUT = 5.0
READ_TIMEOUT = 10.0
MAX_CONNECTIONS = 64


class TLSThreadingServer(socketserver.ThreadingMixIn, http.server.HTTPServer):
    allow_reuse_address = True
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handler: type, context: Callable[[], ssl.SSLContext],
                 max_connections: int = MAX_CONNECTIONS) -> None:
        self.context = context  # called per connection: a renewed certificate is picked up
        self.slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, handler)

    def get_request(self) -> tuple[Any, Any]:
        sock, addr = self.socket.accept()
        sock.settimeout(HANDSHAKE_TIMEOUT)
        try:
            return self.context().wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr
        except (OSError, ValueError):
            sock.close()
            raise

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self.slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            request.do_handshake()
            request.settimeout(READ_TIMEOUT)
            self.finish_request(request, client_address)
        except (OSError, ValueError):
            pass
        finally:
            self.shutdown_request(request)
            self.slots.release()
