"""etcd snapshots, as `etcdctl snapshot save` takes them: the node's own member's database
streamed through etcd's maintenance API (its JSON gateway: one message per chunk, each a base64
blob), then to the operator through the node's endpoint (k4s.cluster.metrics, cluster admins
only). etcd ends the stream with the sha256 of the database, which `verify` checks and
`etcdutl snapshot restore` checks again.

A database alone restores nothing on diskless servers: the keys that sealed its Secrets and
signed its identities were in the RAM of the machines that were lost. So a snapshot is saved
with the shared keys (k4s.cluster.copycerts' files), sealed as a server join's are: the
operator's host sends a one-time X25519 public key, the server seals the files with a new
certificate key and that key to the public key (`sealed_keys`); the host keeps the sealed files
beside the database and prints the key, which the operator keeps apart from both.

A restore is a segment for one machine (`segment`, as a join secret is: RAM only, deleted once
used): the database, the sealed files and the key under layout.RESTORE_DIR. A server that boots
with it and no etcd data (k4s.cluster.server) opens the files, writes them where its PKI keeps
them, and has `etcdutl snapshot restore` make a cluster of one member, itself, from the database
(`restore_command`); other servers then join it with new joins.
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
from typing import Any

from k4s.errors import K4sError

PATH = "/etcd/snapshot"  # on the node's endpoint
KEYS_PATH = "/etcd/keys"  # on a server's endpoint, with ?public-key=<base64url>: the shared keys, sealed
KEYS_NAME = "etcd-snapshot-keys"
LABEL = "etcd-snapshot"  # bound into the wrapped key: it opens as a snapshot's, never as a join's
DB, KEYS, KEY = "etcd.db", "keys.json", "certificate-key"  # a restore segment's files, in layout.RESTORE_DIR
# Restored revisions jump ahead and are marked compacted, so that every client of the old cluster
# (a kubelet's watch, an informer's resourceVersion) lists again instead of waiting for a
# revision it already saw: what etcd's and Kubernetes' restore guides ask for.
BUMP_REVISION = 1_000_000_000
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


def sealed_keys(files: Any, public_key: bytes) -> dict[str, Any]:
    """A server's answer at KEYS_PATH: the shared files sealed with a new certificate key, and that
    key sealed to the operator's one-time public key. Imports cryptography: run it in a child."""
    from k4s.cluster import copycerts

    if len(public_key) != 32:
        raise K4sError("the public key is not an X25519 key", hint="k4s etcd-snapshot save makes one")
    key = copycerts.new_key()
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEYS_NAME},
            "data": copycerts.sealed_data(files, key),
            copycerts.WRAPPED_KEY: base64.b64encode(copycerts.wrap_key(key, public_key, LABEL)).decode()}


def keys_of(answer: dict[str, Any], private_key: Any) -> tuple[dict[str, Any], str]:
    """The operator's side: (the sealed files to keep, the certificate key), once the key opens
    every file; K4sError otherwise."""
    from k4s.cluster import copycerts

    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        raise K4sError("the server's sealed keys are not a k4s server's answer", hint="take the snapshot again")
    key = copycerts.unwrapped(str(answer.get(copycerts.WRAPPED_KEY, "")), private_key, LABEL,
                              "the server's sealed keys", "take the snapshot again")
    doc = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": KEYS_NAME}, "data": answer["data"]}
    copycerts.opened(doc, key, hint="take the snapshot again")
    return doc, key


def segment(out: Path, db: Path, keys_doc: dict[str, Any], key: str) -> None:
    """A restore segment for one machine (uncompressed cpio, 0600 files in a 0700 directory),
    written to out.part and renamed: the database as saved, the sealed files, the key."""
    import os
    import stat

    from k4s import layout
    from k4s.image import cpio

    where = layout.member(layout.RESTORE_DIR)
    entries = [cpio.Entry(where, stat.S_IFDIR | 0o700),
               cpio.Entry(f"{where}/{DB}", stat.S_IFREG | 0o600, source=db, size=db.stat().st_size),
               cpio.Entry(f"{where}/{KEYS}", stat.S_IFREG | 0o600, json.dumps(keys_doc).encode()),
               cpio.Entry(f"{where}/{KEY}", stat.S_IFREG | 0o600, (key + "\n").encode())]
    part = out.with_name(out.name + ".part")
    try:
        with open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            cpio.write(f, entries, mtime=0)
        os.replace(part, out)
    except BaseException:
        part.unlink(missing_ok=True)
        raise


def opened_keys(text: str, key: str, source: str, remedy: str) -> tuple[dict[str, Any], dict[str, bytes]]:
    """Sealed keys as `keys_of` kept them (FILE.keys, or a restore segment's), read and opened with
    the key: (the document, {name: plaintext}); K4sError, with remedy as the hint, when they are
    not such keys, and WrongKey when the key does not open them. Imports cryptography."""
    from k4s.cluster import copycerts

    try:
        doc = json.loads(text)
    except ValueError:
        doc = None
    if not isinstance(doc, dict) or not isinstance(doc.get("data"), dict):
        raise K4sError(f"{source} is not the sealed keys `k4s etcd-snapshot save` writes", hint=remedy)
    if not copycerts.HEX_KEY.fullmatch(key):
        raise K4sError("the certificate key is not 64 hex digits", hint=remedy)
    return doc, copycerts.opened(doc, key, hint="the key printed by the `k4s etcd-snapshot save` that wrote "
                                                "these keys opens them")


def opened_segment(where: Path) -> tuple[Path, dict[str, bytes]]:
    """A server's side: (the database, the shared files opened with the key), or K4sError saying
    which file is missing or that the key does not open them. Imports cryptography: in a child."""
    remedy = "make it with `k4s etcd-snapshot restore FILE --segment OUT`"
    try:
        text, key = (where / KEYS).read_text(), (where / KEY).read_text().strip()
    except (OSError, ValueError) as e:
        raise K4sError(f"the restore segment in {where} is incomplete: {e}", hint=remedy) from None
    if not (where / DB).is_file():
        raise K4sError(f"the restore segment in {where} holds no {DB}", hint=remedy)
    return where / DB, opened_keys(text, key, f"the restore segment's {KEYS}", remedy)[1]


def restore_command(etcdutl: Path, db: Path, data_dir: Path, name: str, peer_url: str) -> list[str]:
    """etcdutl's restore of db into data_dir: a new cluster of one member, name at peer_url."""
    return [str(etcdutl), "snapshot", "restore", str(db), f"--data-dir={data_dir}", f"--name={name}",
            f"--initial-cluster={name}={peer_url}", f"--initial-advertise-peer-urls={peer_url}",
            f"--bump-revision={BUMP_REVISION}", "--mark-compacted"]
