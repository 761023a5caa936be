"""The download source: official-release layout served by a local HTTP server, sha256 checked."""

from __future__ import annotations

import hashlib
import http.server
import io
import json
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

from tests.conftest import ROOT

FETCH = ROOT / "build" / "components" / "fetch.py"
VERSIONS = {s["component"]: s["version"] for s in json.loads((FETCH.parent / "releases.json").read_text())["sources"]}
KUBE, ETCD, RUNC = VERSIONS["kube"], VERSIONS["etcd"], VERSIONS["runc"]


def tgz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as t:
        for name, data in members.items():
            ti = tarfile.TarInfo(name)
            ti.size = len(data)
            t.addfile(ti, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def mirror(tmp_path):
    root = tmp_path / "www"

    def put(path: str, data: bytes) -> None:
        p = root / path.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.RequestHandlerClass.log_message = lambda *a: None  # type: ignore[method-assign]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield put, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def run(out: Path, url: str, *only: str) -> subprocess.CompletedProcess[str]:
    args = [sys.executable, str(FETCH), "--out", str(out), "--mirror", url]
    for o in only:
        args += ["--only", o]
    return subprocess.run(args, capture_output=True, text=True, timeout=60)


def test_fetch_verifies_published_sha256(mirror, tmp_path) -> None:
    put, url = mirror
    for name in ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy", "kubectl"):
        data = f"#!fake {name}\n".encode()
        put(f"/release/{KUBE}/bin/linux/amd64/{name}", data)
        put(f"/release/{KUBE}/bin/linux/amd64/{name}.sha256", hashlib.sha256(data).hexdigest().encode())
    tar = tgz({f"etcd-{ETCD}-linux-amd64/etcd": b"etcd", f"etcd-{ETCD}-linux-amd64/etcdctl": b"etcdctl"})
    put(f"/etcd-io/etcd/releases/download/{ETCD}/etcd-{ETCD}-linux-amd64.tar.gz", tar)
    put(f"/etcd-io/etcd/releases/download/{ETCD}/SHA256SUMS",
        f"{'0' * 64}  other.tar.gz\n{hashlib.sha256(tar).hexdigest()}  etcd-{ETCD}-linux-amd64.tar.gz\n".encode())
    r = run(tmp_path / "bin", url, "kube", "etcd")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "bin" / "kubelet").read_bytes() == b"#!fake kubelet\n"
    assert (tmp_path / "bin" / "etcdctl").read_bytes() == b"etcdctl"
    assert "sha256 verified" in r.stdout


def test_fetch_refuses_a_tampered_file_and_writes_nothing(mirror, tmp_path) -> None:
    put, url = mirror
    put(f"/opencontainers/runc/releases/download/{RUNC}/runc.amd64", b"tampered")
    put(f"/opencontainers/runc/releases/download/{RUNC}/runc.sha256sum",
        f"{hashlib.sha256(b'original').hexdigest()}  runc.amd64\n".encode())
    r = run(tmp_path / "bin", url, "runc")
    assert r.returncode == 1
    assert "does not match the published" in r.stderr and "nothing was written" in r.stderr
    assert not (tmp_path / "bin" / "runc").exists()
