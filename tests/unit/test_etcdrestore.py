"""Restoring a snapshot on diskless servers: the shared keys saved sealed beside the database, the
segment one machine boots with, and what that server does with it."""

from __future__ import annotations

import base64
import hashlib
import json
import stat
from pathlib import Path

import pytest

from k4s import config, layout
from k4s.cluster import certs, copycerts, etcdsnapshot, metrics, pki, server
from k4s.cluster.certs import Identity
from k4s.cluster.node import Node
from k4s.errors import K4sError
from k4s.image import cpio
from k4s.layout import Paths
from tests.conftest import k4s_cmd
from tests.unit.test_metrics import PEER_ADMIN, PEER_NOBODY, FakeAuthz

DB = bytes(range(256)) * 64
SNAPSHOT = DB + hashlib.sha256(DB).digest()


@pytest.fixture
def server_pki(tmp_path: Path) -> certs.Files:
    store = pki.PKI(tmp_path / "pki", tmp_path / "kubeconfig", 90, "https://127.0.0.1:6443")
    store.ensure(Identity("server-1", "10.77.0.11", "10.43.0.1", "cluster.local"))
    store.files.encryption_config.write_text("kind: EncryptionConfiguration\n")
    return store.files


def saved(server_pki: certs.Files, tmp_path: Path) -> tuple[Path, Path, str]:
    """What `k4s etcd-snapshot save` leaves: the snapshot, its sealed keys, the printed key."""
    private, public = copycerts.new_request_key()
    doc, key = etcdsnapshot.keys_of(json.loads(json.dumps(etcdsnapshot.sealed_keys(server_pki, public))), private)
    (tmp_path / "etcd.db").write_bytes(SNAPSHOT)
    (tmp_path / "etcd.db.keys").write_text(json.dumps(doc))
    return tmp_path / "etcd.db", tmp_path / "etcd.db.keys", key


def test_the_sealed_keys_open_only_with_the_one_time_key_and_hold_no_key_in_the_clear(server_pki: certs.Files) -> None:
    private, public = copycerts.new_request_key()
    answer = etcdsnapshot.sealed_keys(server_pki, public)
    assert b"PRIVATE KEY" not in json.dumps(answer).encode()
    assert b"PRIVATE KEY" not in b"".join(base64.b64decode(v) for v in answer["data"].values())
    doc, key = etcdsnapshot.keys_of(answer, private)
    assert copycerts.opened(doc, key)["ca.key"] == server_pki.key(certs.CLUSTER_CA).read_bytes()
    assert copycerts.WRAPPED_KEY not in doc  # what is kept on disk: the sealed files only
    other, _ = copycerts.new_request_key()
    with pytest.raises(K4sError, match="does not open with this request's key"):
        etcdsnapshot.keys_of(answer, other)
    # a key wrapped for a server's join does not open as a snapshot's (the label is bound in)
    answer[copycerts.WRAPPED_KEY] = base64.b64encode(copycerts.wrap_key(key, public, "abcdef")).decode()
    with pytest.raises(K4sError, match="does not open"):
        etcdsnapshot.keys_of(answer, private)
    with pytest.raises(K4sError, match="not an X25519 key"):
        etcdsnapshot.sealed_keys(server_pki, b"short")


def test_the_segment_holds_the_database_the_sealed_files_and_the_key_for_root_alone(
        server_pki: certs.Files, tmp_path: Path) -> None:
    db, keys, key = saved(server_pki, tmp_path)
    out = tmp_path / "restore.seg"
    r = k4s_cmd("etcd-snapshot", "restore", str(db), "--segment", str(out), env={"K4S_CERTIFICATE_KEY": key})
    assert r.returncode == 0, r.stderr
    assert out.stat().st_mode & 0o777 == 0o600
    members = {m.name: m for m in cpio.read(out.read_bytes())}
    where = layout.member(layout.RESTORE_DIR)
    assert stat.S_IMODE(members[where].mode) == 0o700
    for name in (etcdsnapshot.DB, etcdsnapshot.KEYS, etcdsnapshot.KEY):
        assert stat.S_IMODE(members[f"{where}/{name}"].mode) == 0o600, name
    assert members[f"{where}/{etcdsnapshot.DB}"].data == SNAPSHOT
    # what the server opens after the kernel unpacked it
    unpacked = tmp_path / "root"
    cpio.extract(out.read_bytes(), unpacked)
    path, blobs = etcdsnapshot.opened_segment(unpacked / where)
    assert path.read_bytes() == SNAPSHOT and blobs["sa.key"] == server_pki.sa_key.read_bytes()


@pytest.mark.parametrize("case, error", [
    ("wrong key", "does not open etcd-snapshot-keys"),
    ("not a key", "the certificate key is not 64 hex digits"),
    ("altered database", "does not match the sha256"),
    ("no keys", "cannot read the sealed keys"),
    ("keys not json", "is not the sealed keys"),
])
def test_a_bad_restore_is_one_line_and_writes_nothing(server_pki: certs.Files, tmp_path: Path, case: str,
                                                      error: str) -> None:
    db, keys, key = saved(server_pki, tmp_path)
    if case == "wrong key":
        key = copycerts.new_key()
    elif case == "not a key":
        key = "0123"
    elif case == "altered database":
        db.write_bytes(SNAPSHOT[:100] + bytes([SNAPSHOT[100] ^ 1]) + SNAPSHOT[101:])
    elif case == "no keys":
        keys.unlink()
    else:
        keys.write_text("{not json")
    out = tmp_path / "restore.seg"
    r = k4s_cmd("etcd-snapshot", "restore", str(db), "--segment", str(out), env={"K4S_CERTIFICATE_KEY": key})
    assert r.returncode != 0 and error in r.stderr, r.stderr
    assert len([ln for ln in r.stderr.splitlines() if "error:" in ln]) == 1, r.stderr
    assert not out.exists() and not (tmp_path / "restore.seg.part").exists()


def test_the_key_is_read_from_the_line_save_printed_on_stdin(server_pki: certs.Files, tmp_path: Path) -> None:
    import subprocess
    import sys

    db, _, key = saved(server_pki, tmp_path)
    r = subprocess.run([sys.executable, "-m", "k4s", "etcd-snapshot", "restore", str(db), "--segment",
                        str(tmp_path / "seg")], input=f"k4s.certificate-key={key}\n", text=True, capture_output=True,
                       cwd=Path(__file__).resolve().parents[2], timeout=60, env={"PATH": "/usr/bin:/bin", "K4S_CMDLINE": ""})
    assert r.returncode == 0 and (tmp_path / "seg").exists(), r.stderr


def node(tmp_path: Path, **more: str) -> Node:
    cfg = config.load(config_file=None, cmdline="", overrides={
        "data-dir": str(tmp_path / "data"), "run-dir": str(tmp_path / "run"), "bin-dir": str(tmp_path / "bin"),
        "node-name": "server-1", **more})
    return Node(cfg, Paths.of(cfg.data_dir, cfg.run_dir), "10.77.0.11", "eth0", tmp_path / "bin")


def restore_dir(tmp_path: Path) -> Path:
    d = tmp_path / "restore"
    d.mkdir()
    (d / etcdsnapshot.DB).write_bytes(SNAPSHOT)
    return d


def test_a_server_restores_only_from_empty_and_never_when_it_joins(tmp_path: Path) -> None:
    n = node(tmp_path)
    assert not server.restoring(n, tmp_path / "none")
    d = restore_dir(tmp_path)
    assert server.restoring(n, d)
    (n.paths.data / "etcd" / "member").mkdir(parents=True)
    with pytest.raises(K4sError, match="etcd already holds data"):
        server.restoring(n, d)
    joiner = node(tmp_path / "j", server="https://10.77.0.12:6443", token="abcdef.0123456789abcdef",
                  **{"ca-hash": "sha256:" + "0" * 64, "certificate-key": "0" * 64})
    with pytest.raises(K4sError, match="a joining server takes its data from the cluster"):
        server.restoring(joiner, d)


def fake_etcdutl(tmp_path: Path, body: str) -> None:
    (tmp_path / "bin").mkdir(exist_ok=True)
    tool = tmp_path / "bin" / "etcdutl"
    tool.write_text("#!/bin/sh\n" + body)
    tool.chmod(0o755)


def test_the_restored_data_goes_into_place_whole_and_the_segment_is_deleted(tmp_path: Path) -> None:
    # etcdutl as it behaves: the database into --data-dir (which must not exist yet), a cluster of one
    fake_etcdutl(tmp_path, 'for a; do case "$a" in --data-dir=*) d="${a#--data-dir=}";; esac; done\n'
                           'test ! -e "$d" && mkdir -p "$d/member/snap" && echo "$@" > "$d/member/args"\n')
    n, d = node(tmp_path), restore_dir(tmp_path)
    (n.paths.data / "etcd").mkdir(parents=True)  # an empty one, as etcd's command leaves it
    server.restore_etcd(n, d)
    args = (n.paths.data / "etcd" / "member" / "args").read_text()
    assert "--name=server-1 --initial-cluster=server-1=https://10.77.0.11:2380" in args
    assert "--bump-revision=1000000000 --mark-compacted" in args
    assert not d.exists() and not (n.paths.data / "etcd.restoring").exists()


def test_a_snapshot_etcdutl_refuses_is_one_line_and_leaves_no_data(tmp_path: Path) -> None:
    fake_etcdutl(tmp_path, 'echo "Error: expected sha256 [1 2], got [3 4]" >&2; exit 1\n')
    n, d = node(tmp_path), restore_dir(tmp_path)
    with pytest.raises(K4sError, match=r"etcdutl refused the snapshot: Error: expected sha256"):
        server.restore_etcd(n, d)
    assert not (n.paths.data / "etcd" / "member").exists() and not d.exists()


def test_the_endpoint_seals_the_keys_for_a_cluster_admin_only(tmp_path: Path) -> None:
    _, public = copycerts.new_request_key()
    e = metrics.Endpoint(Paths.of(tmp_path / "d", tmp_path / "r"), (Path("/x"), Path("/y")), Path("/z"),
                         FakeAuthz({}, {"admin"}), sealed_keys=lambda k: {"for": base64.b64encode(k).decode()})  # type: ignore[arg-type]
    query = "/etcd/keys?public-key=" + base64.urlsafe_b64encode(public).decode().rstrip("=")
    assert e.answer(query, None, None)[0] == 401
    assert e.answer(query, PEER_NOBODY, None)[0] == 403
    status, ctype, body = e.answer(query, PEER_ADMIN, None)
    assert status == 200 and json.loads(body) == {"for": base64.b64encode(public).decode()}  # type: ignore[arg-type]
    assert e.answer("/etcd/keys?public-key=AAAA", PEER_ADMIN, None)[0] == 400
    assert e.answer("/etcd/keys", PEER_ADMIN, None)[0] == 400
    # a worker's endpoint has none
    w = metrics.Endpoint(Paths.of(tmp_path / "d", tmp_path / "r"), (Path("/x"), Path("/y")), Path("/z"),
                         FakeAuthz({}, {"admin"}))  # type: ignore[arg-type]
    assert w.answer(query, PEER_ADMIN, None)[0] == 404
