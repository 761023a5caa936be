"""The operator's trust on the build host: its CA stays here, the seed is public, and a
kubeconfig is written only for a CA that matches the node's pin."""

from __future__ import annotations

import base64
import json
import ssl
import stat
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from k4s.cluster import certs, pki
from k4s.errors import K4sError
from k4s.host import operator
from k4s.host.vm import VM
from k4s.image import cpio
from tests.conftest import tool


def test_operator_ca_stays_private_and_mints_a_bindable_admin(tmp_path) -> None:
    op = operator.Operator(tmp_path / "operator")
    op.ensure()
    assert stat.S_IMODE(op.dir.stat().st_mode) == 0o700
    for key in op.dir.glob("*.key"):
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    r = subprocess.run([tool("openssl"), "verify", "-CAfile", str(op.ca_crt), "-purpose", "sslclient",
                        str(op.admin_crt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    subject = subprocess.run([tool("openssl"), "x509", "-noout", "-subject", "-in", str(op.admin_crt)],
                             capture_output=True, text=True).stdout
    assert f"O = {certs.OPERATORS_GROUP}" in subject and "system:masters" not in subject
    before = {p.name: p.read_bytes() for p in op.dir.iterdir()}
    op.ensure()
    assert {p.name: p.read_bytes() for p in op.dir.iterdir()} == before


def test_the_seed_holds_no_private_key(tmp_path) -> None:
    manifest = tmp_path / "m.yaml"
    manifest.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    vm = VM(tmp_path / "out", Path("k"), Path("i"), manifests=[manifest])
    vm.out.mkdir()
    members = {m.name: m for m in cpio.read(vm.seed())}
    assert set(n for n, m in members.items() if stat.S_ISREG(m.mode)) == {
        "var/lib/k4s/pki/operator-ca.crt", "var/lib/k4s/manifests/m.yaml"}
    assert all(b"PRIVATE KEY" not in m.data for m in members.values())
    assert members["var/lib/k4s/pki/operator-ca.crt"].data == vm.operator.ca_crt.read_bytes()


# --- the pinned CA: a fake node that serves cluster-info over TLS -----------------------------------

def fake_node(d: Path) -> tuple[HTTPServer, int, bytes]:
    """TLS with a serving certificate from the node's own CA; cluster-info names that CA."""
    store = pki.PKI(d, d)
    key, ca = pki.issue_ca(certs.CLUSTER_CA)
    store.write("ca", key, ca)
    leaf = certs.Leaf("apiserver", certs.CLUSTER_CA, "kube-apiserver", usages=(certs.SERVER,),
                      ip_addresses=("127.0.0.1",))
    store.write("apiserver", *pki.issue_leaf(leaf, key, ca))
    ca_pem = pki.cert_pem(ca)
    info = {"data": {"kubeconfig": yaml.safe_dump({"clusters": [{"cluster": {
        "server": "https://127.0.0.1", "certificate-authority-data": base64.b64encode(ca_pem).decode()}}]})}}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            body = json.dumps(info if "cluster-info" in self.path else {"gitVersion": "v1.35.4"}).encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = HTTPServer(("127.0.0.1", 0), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(store.crt("apiserver"), store.key("apiserver"))
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv, srv.server_address[1], ca_pem


def test_kubeconfig_trusts_the_ca_that_matches_the_pin(tmp_path) -> None:
    op = operator.Operator(tmp_path / "operator")
    op.ensure()
    srv, port, ca = fake_node(tmp_path / "node")
    try:
        out = tmp_path / "kubeconfig"
        operator.write_kubeconfig(out, "127.0.0.1", port, pki.spki_hash_pem(ca), op)
    finally:
        srv.shutdown()
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    doc = yaml.safe_load(out.read_text())
    assert base64.b64decode(doc["clusters"][0]["cluster"]["certificate-authority-data"]) == ca
    assert doc["clusters"][0]["cluster"]["server"] == f"https://127.0.0.1:{port}"
    assert base64.b64decode(doc["users"][0]["user"]["client-certificate-data"]) == op.admin_crt.read_bytes()


def test_a_ca_that_does_not_match_the_pin_writes_nothing(tmp_path) -> None:
    op = operator.Operator(tmp_path / "operator")
    op.ensure()
    srv, port, _ = fake_node(tmp_path / "impostor")
    other_pin = pki.spki_hash(pki.issue_ca(certs.CLUSTER_CA)[1])
    try:
        with pytest.raises(K4sError) as e:
            operator.write_kubeconfig(tmp_path / "kubeconfig", "127.0.0.1", port, other_pin, op)
    finally:
        srv.shutdown()
    assert f"not the pinned {other_pin}" in e.value.message and "\n" not in e.value.render()
    assert not (tmp_path / "kubeconfig").exists()
