"""etcd snapshots, as `etcdctl snapshot save` takes them: the node's own member's database
streamed through etcd's maintenance API (its JSON gateway: one message per chunk, each a base64
blob), then to the operator through the node's endpoint (k4s.cluster.metrics, cluster admins
only). etcd ends the stream with the sha256 of the database, which `verify` checks and
`etcdutl snapshot restore` checks again.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import json
import ssl
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from k4s.errors import K4sError

PATH = "/etcd/snapshot"  # on the node's endpoint
DIGEST = 32  # the sha256 etcd appends
MAX_MESSAGE = 1 << 20  # bytes of one gateway message (etcd sends 32 KiB blobs): more is not etcd


def stream(endpoint: str, ctx: ssl.SSLContext, timeout: float = 60.0) -> Iterator[bytes]:
    """The snapshot's bytes from the member at `endpoint`, as they come: the database, then its
    sha256. K4sError when etcd refuses or the stream breaks off."""
    u = urllib.parse.urlsplit(endpoint)
    conn = http.client.HTTPSConnection(u.hostname or "", u.port or 2379, context=ctx, timeout=timeout)
    try:
        conn.request("POST", "/v3/maintenance/snapshot", b"{}", {"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            raise K4sError(f"etcd refused the snapshot: HTTP {r.status} {r.read(300).decode(errors='replace')}",
                           hint="see the server's etcd log")
        yield from blobs(iter(lambda: r.read1(1 << 16), b""))
    finally:
        conn.close()


def blobs(chunks: Iterator[bytes]) -> Iterator[bytes]:
    """The bytes in etcd's gateway stream (JSON messages, each a base64 blob, split anywhere)."""
    decoder, buf = json.JSONDecoder(), ""
    for chunk in chunks:
        buf += chunk.decode("ascii", errors="replace")
        while buf := buf.lstrip():
            try:
                msg, end = decoder.raw_decode(buf)
            except RecursionError:  # nesting no gateway message has
                raise K4sError("etcd's snapshot stream is not etcd's", hint="see the server's etcd log") from None
            except ValueError:
                if len(buf) > MAX_MESSAGE:
                    raise K4sError("etcd's snapshot stream is not etcd's", hint="see the server's etcd log") from None
                break  # the rest of the message is still coming
            buf = buf[end:]
            if not isinstance(msg, dict) or "error" in msg or not isinstance(msg.get("result"), dict):
                raise K4sError(f"etcd ended the snapshot: {str(msg)[:300]}", hint="see the server's etcd log")
            try:
                yield base64.b64decode(msg["result"].get("blob", ""), validate=True)
            except (ValueError, TypeError):
                raise K4sError("etcd's snapshot stream holds a blob that is not base64",
                               hint="see the server's etcd log") from None
    if buf.strip():
        raise K4sError("etcd's snapshot stream broke off", hint="take it again")


def verify(path: Path) -> int:
    """The database's size, once its trailing sha256 matches; K4sError otherwise."""
    h = hashlib.sha256()
    size = path.stat().st_size - DIGEST
    if size <= 0:
        raise K4sError(f"{path} is too short to be an etcd snapshot", hint="take it again")
    with open(path, "rb") as f:
        left = size
        while left:
            block = f.read(min(left, 1 << 20))
            if not block:
                break
            h.update(block)
            left -= len(block)
        trailer = f.read()
    if h.digest() != trailer:
        raise K4sError(f"{path}: the database does not match the sha256 etcd sent with it",
                       hint="the stream was altered or cut short: take it again")
    return size
