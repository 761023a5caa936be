"""A thin stdlib HTTPS client for the apiserver and the components' health endpoints.

Enough for readiness probes, discovery and server-side apply (a PATCH with
Content-Type application/apply-patch+yaml and ?fieldManager=k4s): no 72 MB
client library.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import ssl
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k4s.cluster.certs import ADMIN, CLUSTER_CA, Files
from k4s.errors import K4sError

FIELD_MANAGER = "k4s"
MAX_WATCH_EVENT = 4 << 20  # bytes of one watch event (one object): a longer line is an error


class APIError(K4sError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"apiserver answered {status}: {message}")
        self.status = status


_contexts: dict[tuple[Path | None, ...], tuple[tuple[float, ...], ssl.SSLContext]] = {}
_contexts_lock = threading.Lock()


def tls_context(ca: Path | None = None, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    """A client context trusting ca (or anything, without one), presenting cert and key. Kept
    while the files stay as they are: readiness probes ask several times a second, and loading
    a key is CPU a starting node needs elsewhere; a renewed certificate makes a new one."""
    paths = (ca, cert, key)
    stamp = tuple(os.stat(p).st_mtime if p else 0.0 for p in paths)
    with _contexts_lock:
        got = _contexts.get(paths)
    if got and got[0] == stamp:
        return got[1]
    ctx = _new_tls_context(ca, cert, key)
    with _contexts_lock:
        _contexts[paths] = (stamp, ctx)
    return ctx


def _new_tls_context(ca: Path | None, cert: Path | None, key: Path | None) -> ssl.SSLContext:
    if ca is None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cafile=str(ca))
    if cert and key:
        ctx.load_cert_chain(str(cert), str(key))
    return ctx


_kept = threading.local()  # a probing thread's open connections: {(scheme, host, port): (ctx, connection)}


def get(url: str, ctx: ssl.SSLContext | None = None, timeout: float = 2.0, keep: bool = False) -> tuple[int, bytes]:
    """One GET; (status, body). Connection errors raise OSError. With keep, the connection stays
    open for this thread's next GET of the same server with the same context: a readiness probe
    asks four times a second while a node starts, and a TLS handshake each time was most of
    k4s's own CPU then (under TCG, on the way to Ready)."""
    u = urllib.parse.urlsplit(url)
    where = (u.scheme, u.hostname or "", u.port or (443 if u.scheme == "https" else 80))
    if getattr(_kept, "pid", None) != os.getpid():  # a forked child opens its own
        _kept.pid, _kept.pool = os.getpid(), {}
    pool: dict[tuple[str, str, int], tuple[ssl.SSLContext | None, http.client.HTTPConnection]] = _kept.pool
    held = pool.pop(where, None) if keep else None
    if held is not None and held[0] is not ctx:
        held[1].close()
        held = None
    for reused in ((True, False) if held else (False,)):
        if reused:
            conn = held[1]  # type: ignore[index]
        elif u.scheme == "https":
            conn = http.client.HTTPSConnection(where[1], where[2], context=ctx, timeout=timeout)
        else:
            conn = http.client.HTTPConnection(where[1], where[2], timeout=timeout)
        try:
            conn.request("GET", u.path + (f"?{u.query}" if u.query else ""))
            r = conn.getresponse()
            body = r.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            if reused:
                continue  # the server closed the idle connection (or restarted): once more, afresh
            raise
        if keep and not r.will_close:
            pool[where] = (ctx, conn)
        else:
            conn.close()
        return r.status, body
    raise AssertionError("unreachable")


def says_ok(url: str, ctx: ssl.SSLContext | None = None) -> bool:
    """A health endpoint (/healthz, /readyz) answers 200 with the body `ok` (a probe: kept open)."""
    status, body = get(url, ctx, keep=True)
    return status == 200 and body.strip() == b"ok"


def kubeconfig_tls(path: Path) -> tuple[str, ssl.SSLContext]:
    """A kubeconfig with embedded data (what k4s writes): its current context's server, and a TLS
    context with that user's certificate, trusting that cluster's CA."""
    import base64
    import os
    import tempfile

    import yaml

    try:
        kc = yaml.safe_load(path.read_text())
        ctx_name = kc["current-context"]
        ctx = next(c["context"] for c in kc["contexts"] if c["name"] == ctx_name)
        cluster = next(c["cluster"] for c in kc["clusters"] if c["name"] == ctx["cluster"])
        user = next(u["user"] for u in kc["users"] if u["name"] == ctx["user"])
        ca = base64.b64decode(cluster["certificate-authority-data"]).decode()
        pem = base64.b64decode(user["client-certificate-data"]) + b"\n" + base64.b64decode(user["client-key-data"])
        server = str(cluster["server"])
    except OSError as e:
        raise K4sError(f"cannot read kubeconfig {path}: {e.strerror}", hint="run `make up` (it writes out/kubeconfig)") from None
    except (yaml.YAMLError, KeyError, TypeError, StopIteration, ValueError, AttributeError):
        raise K4sError(f"{path} is not a kubeconfig with embedded certificates",
                       hint="use the one `k4s vm` writes (out/kubeconfig)") from None
    tls = ssl.create_default_context(cadata=ca)
    with tempfile.TemporaryDirectory() as d:  # ssl loads a key from a file only; 0700, removed at once
        f = os.path.join(d, "client.pem")
        with open(os.open(f, os.O_WRONLY | os.O_CREAT, 0o600), "wb") as out:
            out.write(pem)
        tls.load_cert_chain(f)
    return server, tls


@dataclass
class Client:
    host: str
    port: int
    ctx: ssl.SSLContext
    timeout: float = 10.0
    bearer: str = ""  # a bearer token (a bootstrap token), when the TLS context has no client certificate
    _resources: dict[str, dict[str, tuple[str, bool]]] = field(default_factory=dict)
    _local: threading.local = field(default_factory=threading.local, repr=False, compare=False)

    @classmethod
    def from_files(cls, files: Files, port: int, user: str = ADMIN, host: str = "127.0.0.1") -> Client:
        """As one of the node's own identities, trusting the node's CA."""
        return cls(host, port, tls_context(files.crt(CLUSTER_CA), files.crt(user), files.key(user)))

    @classmethod
    def from_kubeconfig(cls, path: Path) -> Client:
        """As the current context's user of a kubeconfig with embedded data (what k4s writes)."""
        server, tls = kubeconfig_tls(path)
        u = urllib.parse.urlsplit(server)
        return cls(u.hostname or "", u.port or 443, tls)

    def request(self, method: str, path: str, body: bytes | None = None,
                content_type: str = "application/json") -> tuple[int, bytes]:
        """One request on this thread's kept-alive connection: a TLS handshake costs the
        apiserver and us more than most requests (under TCG, tenths of a second each). A
        connection the server closed while idle is opened again and the request sent once more,
        except a POST, which gets a fresh connection when its own has been idle."""
        headers = self.headers()
        if body is not None:
            headers["Content-Type"] = content_type
        for attempt in (1, 2):
            conn, reused = self._connection(fresh=method == "POST")
            try:
                conn.request(method, path, body=body, headers=headers)
                r = conn.getresponse()
                data = r.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ssl.SSLEOFError):
                self.close()
                if reused and method != "POST" and attempt == 1:
                    continue
                raise
            except BaseException:
                self.close()
                raise
            self._local.used = time.monotonic()
            if r.will_close:
                self.close()
            return r.status, data
        raise AssertionError("not reached")

    def headers(self) -> dict[str, str]:
        """JSON, and the bearer token if this client has one."""
        return {"Accept": "application/json", **({"Authorization": f"Bearer {self.bearer}"} if self.bearer else {})}

    IDLE = 5.0  # seconds after which a POST does not trust a kept-alive connection

    def _connection(self, fresh: bool) -> tuple[http.client.HTTPSConnection, bool]:
        """This thread's connection (in this process: a forked child opens its own); whether it
        has carried a request already."""
        local = self._local
        if getattr(local, "pid", None) != os.getpid():
            local.conn, local.pid = None, os.getpid()  # the parent's socket is the parent's
        if local.conn is not None and fresh and time.monotonic() - local.used > self.IDLE:
            self.close()
        if local.conn is None:
            local.conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=self.timeout)
            local.used = 0.0
        return local.conn, local.used > 0

    def close(self) -> None:
        """Close this thread's connection (the next request opens another)."""
        conn = getattr(self._local, "conn", None)
        self._local.conn = None
        if conn is not None and getattr(self._local, "pid", None) == os.getpid():
            conn.close()

    def json(self, method: str, path: str, obj: Any = None, content_type: str = "application/json") -> Any:
        body = None if obj is None else json.dumps(obj).encode()
        status, data = self.request(method, path, body, content_type)
        if status >= 300:
            try:
                msg = json.loads(data).get("message", data.decode(errors="replace"))
            except ValueError:
                msg = data.decode(errors="replace")[:300]
            raise APIError(status, msg)
        return json.loads(data) if data else None

    def watch(self, path: str, seconds: int = 300, stop: threading.Event | None = None) -> Iterator[dict[str, Any]]:
        """A watch's events ({"type": "ADDED", "object": ...}), as the server sends them, on a
        connection of its own, until the server ends the watch (after `seconds`), the
        connection drops, or stop is set (the connection is shut: an apiserver that is
        stopping waits for the watches it serves). Without a resourceVersion the objects that
        exist come first, as ADDED."""
        sep = "&" if "?" in path else "?"
        conn = http.client.HTTPSConnection(self.host, self.port, context=self.ctx, timeout=seconds + 30)
        ended = threading.Event()

        def shut_on_stop(stop: threading.Event) -> None:
            while not ended.wait(0.5):
                if stop.is_set():
                    if conn.sock is not None:
                        conn.sock.shutdown(socket.SHUT_RDWR)  # wakes the read below
                    return

        if stop is not None:
            threading.Thread(target=shut_on_stop, args=(stop,), name="watch-stop", daemon=True).start()
        try:
            conn.request("GET", f"{path}{sep}watch=true&timeoutSeconds={seconds}", headers=self.headers())
            r = conn.getresponse()
            if r.status >= 300:
                raise APIError(r.status, r.read(300).decode(errors="replace"))
            while line := r.readline(MAX_WATCH_EVENT):
                if line.strip():
                    yield json.loads(line)
        finally:
            ended.set()
            conn.close()

    def resources(self, api_version: str) -> dict[str, tuple[str, bool]]:
        """kind -> (plural, namespaced) for a group/version, from discovery (cached)."""
        if api_version not in self._resources:
            base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
            doc = self.json("GET", base)
            self._resources[api_version] = {
                r["kind"]: (r["name"], r["namespaced"]) for r in doc["resources"] if "/" not in r["name"]}
        return self._resources[api_version]

    def path_for(self, obj: dict[str, Any]) -> str:
        try:
            api_version, kind, name = obj["apiVersion"], obj["kind"], obj["metadata"]["name"]
        except (KeyError, TypeError):
            raise K4sError("manifest object lacks apiVersion, kind or metadata.name",
                           hint="every document must be a complete Kubernetes object") from None
        try:
            plural, namespaced = self.resources(api_version)[kind]
        except KeyError:
            raise K4sError(f"the apiserver does not serve kind {kind} in {api_version}",
                           hint="check apiVersion and kind, or install its CRD first") from None
        except APIError as e:
            if e.status == 404:
                raise K4sError(f"the apiserver does not serve {api_version}",
                               hint="check apiVersion, or install its CRD first") from None
            raise
        base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
        if namespaced:
            ns = obj["metadata"].get("namespace") or "default"
            return f"{base}/namespaces/{ns}/{plural}/{name}"
        return f"{base}/{plural}/{name}"

    def get_or_none(self, path: str) -> Any:
        """GET path; None when it is not there (404)."""
        return self.or_none("GET", path)

    def delete_or_none(self, path: str) -> Any:
        """DELETE path; None when it was not there (404): gone either way."""
        return self.or_none("DELETE", path)

    def or_none(self, method: str, path: str) -> Any:
        try:
            return self.json(method, path)
        except APIError as e:
            if e.status == 404:
                return None
            raise

    def apply(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Server-side apply one object, taking ownership of conflicting fields."""
        path = self.path_for(obj) + f"?fieldManager={FIELD_MANAGER}&force=true"
        return self.json("PATCH", path, obj, content_type="application/apply-patch+yaml")
