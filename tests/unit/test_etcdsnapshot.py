"""etcd snapshots: the gateway's stream read as etcd writes it, and a file checked by its sha256."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from k4s.cluster import etcdsnapshot
from k4s.errors import K4sError

DB = bytes(range(256)) * 300
SNAPSHOT = DB + hashlib.sha256(DB).digest()


def gateway(data: bytes, size: int = 32768) -> bytes:
    """What etcd's JSON gateway sends for a snapshot: one message per blob."""
    return b"".join(json.dumps({"result": {"remainingBytes": str(len(data) - i - size),
                                           "blob": base64.b64encode(data[i:i + size]).decode()}}).encode() + b"\n"
                    for i in range(0, len(data), size))


@pytest.mark.parametrize("split", [1, 7, 4096, 1 << 20])
def test_the_stream_gives_the_snapshot_back_however_it_is_split(split: int) -> None:
    raw = gateway(SNAPSHOT)
    chunks = (raw[i:i + split] for i in range(0, len(raw), split))
    assert b"".join(etcdsnapshot.blobs(chunks)) == SNAPSHOT


@pytest.mark.parametrize("raw, message", [
    (gateway(SNAPSHOT)[:-40], "broke off"),
    (b'{"error": {"code": 14, "message": "etcdserver: no leader"}}', "etcd ended the snapshot"),
    (b'{"result": {"blob": "not base64!"}}', "not base64"),
    (b"[" * (2 << 20), "is not etcd's"),
])
def test_a_broken_stream_is_one_error(raw: bytes, message: str) -> None:
    with pytest.raises(K4sError, match=message):
        b"".join(etcdsnapshot.blobs(iter([raw[i:i + 65536] for i in range(0, len(raw), 65536)])))


def test_a_snapshot_is_checked_by_the_sha256_etcd_sends(tmp_path: Path) -> None:
    good = tmp_path / "good.db"
    good.write_bytes(SNAPSHOT)
    assert etcdsnapshot.verify(good) == len(DB)
    altered = tmp_path / "altered.db"
    altered.write_bytes(SNAPSHOT[:100] + b"\0" + SNAPSHOT[101:])
    short = tmp_path / "short.db"
    short.write_bytes(SNAPSHOT[:-1000])
    for bad in (altered, short):
        with pytest.raises(K4sError, match="does not match the sha256"):
            etcdsnapshot.verify(bad)
    tiny = tmp_path / "tiny.db"
    tiny.write_bytes(b"x" * 10)
    with pytest.raises(K4sError, match="too short"):
        etcdsnapshot.verify(tiny)
