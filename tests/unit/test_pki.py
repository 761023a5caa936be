"""PKI: what openssl, a TLS client and kubectl see of the generated files."""

from __future__ import annotations

import socket
import ssl
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from cryptography import x509

from k4s.cluster import pki
from k4s.config import load
from tests.conftest import component, tool

NODE_IP = "10.0.2.15"


def make(tmp_path: Path, node_ip: str = NODE_IP, *extra: str) -> tuple[pki.PKI, pki.Identity]:
    cfg = load("/dev/null", overrides={
        "data-dir": str(tmp_path), "node-name": "node-1", "node-ip": node_ip, "tls-san": ",".join(extra)})
    store, ident = pki.for_config(cfg), pki.identity_for(cfg)
    store.ensure(ident)
    return store, ident


def openssl_verify(ca: Path, crt: Path, purpose: str | None = None) -> subprocess.CompletedProcess[str]:
    args = [tool("openssl"), "verify", "-CAfile", str(ca)]
    if purpose:
        args += ["-purpose", purpose]
    return subprocess.run([*args, str(crt)], capture_output=True, text=True)


def test_every_leaf_verifies_against_its_ca(tmp_path) -> None:
    store, ident = make(tmp_path)
    for leaf in pki.leaves(ident):
        purpose = "sslserver" if leaf.usages == (pki.SERVER,) else "sslclient"
        r = openssl_verify(store.crt(leaf.ca.name), store.crt(leaf.name), purpose)
        assert r.returncode == 0 and ": OK" in r.stdout, (leaf.name, r.stdout, r.stderr)
    # and not against a CA that did not sign it
    r = openssl_verify(store.crt("etcd/ca"), store.crt("apiserver"))
    assert r.returncode != 0
    # a kubelet's serving certificate is no certificate for the apiserver: not the cluster CA's
    r = openssl_verify(store.crt("ca"), store.crt("kubelet-server"), "sslserver")
    assert r.returncode != 0 and openssl_verify(store.crt("kubelet-serving-ca"), store.crt("kubelet-server"),
                                                "sslserver").returncode == 0


def test_subjects_identify_each_client(tmp_path) -> None:
    store, _ = make(tmp_path)
    def subject(name: str) -> str:
        return x509.load_pem_x509_certificate(store.crt(name).read_bytes()).subject.rfc4514_string()
    assert subject("kubelet") == "CN=system:node:node-1,O=system:nodes"
    assert subject("admin") == "CN=kubernetes-admin,O=k4s:node-admins"  # bound by RBAC: withdrawable
    assert subject("super-admin") == "CN=kubernetes-super-admin,O=system:masters"  # bootstrap's first binding only
    assert subject("controller-manager") == "CN=system:kube-controller-manager"
    assert subject("scheduler") == "CN=system:kube-scheduler"
    assert subject("kube-proxy") == "CN=system:kube-proxy"
    assert subject("apiserver-kubelet-client") == "CN=kube-apiserver-kubelet-client"


def test_private_keys_are_0600(tmp_path) -> None:
    make(tmp_path)
    keys = list((tmp_path / "pki").rglob("*.key")) + list((tmp_path / "kubeconfig").glob("*.conf"))
    assert len(keys) >= 20
    for k in keys:
        assert stat.S_IMODE(k.stat().st_mode) == 0o600, k


def _serve_once(store: pki.PKI, port_box: list[int], ready: threading.Event) -> None:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(store.crt("apiserver"), store.key("apiserver"))
    with socket.create_server(("127.0.0.1", 0)) as srv:
        port_box.append(srv.getsockname()[1])
        srv.settimeout(10)
        ready.set()
        while True:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                return
            try:
                with ctx.wrap_socket(conn, server_side=True) as tls:
                    if tls.recv(4) == b"quit":
                        return
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                continue


def _handshake(store: pki.PKI, port: int, name: str) -> bytes:
    ctx = ssl.create_default_context(cafile=str(store.crt("ca")))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname=name) as tls:
        tls.sendall(b"ping")
        return tls.recv(2)


def test_apiserver_cert_tls_handshake_per_san(tmp_path) -> None:
    store, _ = make(tmp_path, NODE_IP, "k4s.example.com", "192.168.7.7")
    port: list[int] = []
    ready = threading.Event()
    t = threading.Thread(target=_serve_once, args=(store, port, ready), daemon=True)
    t.start()
    assert ready.wait(5)
    good = ["node-1", "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local", NODE_IP, "127.0.0.1", "10.43.0.1",
            "k4s.example.com", "192.168.7.7"]
    for name in good:
        assert _handshake(store, port[0], name) == b"ok", name
    for name in ["evil.example.com", "10.43.0.2", "kubernetes.default.svc.other.local"]:
        with pytest.raises(ssl.SSLCertVerificationError):
            _handshake(store, port[0], name)
    _handshake_quit(store, port[0])
    t.join(5)


def _handshake_quit(store: pki.PKI, port: int) -> None:
    ctx = ssl.create_default_context(cafile=str(store.crt("ca")))
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="localhost") as tls:
        tls.sendall(b"quit")


def test_idempotent_second_run_keeps_everything(tmp_path) -> None:
    store, ident = make(tmp_path)
    before = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    results = store.ensure(ident)
    assert {r.action for r in results} == {"kept"}
    after = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    assert before == after


def test_node_ip_change_reissues_serving_certs_keeps_ca(tmp_path) -> None:
    store, _ = make(tmp_path)
    ca = store.crt("ca").read_bytes()
    old_api = store.crt("apiserver").read_bytes()
    old_admin = store.crt("admin").read_bytes()
    r = subprocess.run(["python3", "-m", "k4s", "pki", "init", "--cmdline", "", "--config", "/dev/null",
                        "--set", f"data-dir={tmp_path}", "--set", "node-name=node-1", "--set", "node-ip=10.0.2.16"],
                       capture_output=True, text=True, cwd=Path(__file__).parents[2])
    assert r.returncode == 0, r.stderr
    assert "apiserver                  renewed: SANs changed (+IP:10.0.2.16 -IP:10.0.2.15)" in r.stdout
    assert store.crt("ca").read_bytes() == ca
    assert store.crt("apiserver").read_bytes() != old_api
    assert store.crt("admin").read_bytes() == old_admin
    cert = x509.load_pem_x509_certificate(store.crt("apiserver").read_bytes())
    assert "IP:10.0.2.16" in pki.cert_sans(cert) and "IP:10.0.2.15" not in pki.cert_sans(cert)
    assert openssl_verify(store.crt("ca"), store.crt("apiserver")).returncode == 0


def test_expiring_leaf_is_renewed_and_check_reports_it(tmp_path) -> None:
    store, ident = make(tmp_path)
    ca_key, ca_cert = store.load_ca(pki.CLUSTER_CA)
    leaf = next(leaf for leaf in pki.leaves(ident) if leaf.name == "scheduler")
    key, cert = pki.issue_leaf(leaf, ca_key, ca_cert, days=10)
    store.write("scheduler", key, cert)
    problems = {p.name: p.problems for p in store.check(ident)}
    assert problems["scheduler"] and "expires in" in problems["scheduler"][0]
    assert problems["admin"] == []
    renewed = {r.name: r for r in store.ensure(ident)}
    assert renewed["scheduler"].action == "renewed"
    assert all(not p.problems for p in store.check(ident))


def test_corrupt_ca_is_an_error_not_a_new_identity(tmp_path) -> None:
    store, ident = make(tmp_path)
    store.crt("ca").write_text("garbage")
    with pytest.raises(pki.K4sError) as e:
        store.ensure(ident)
    assert "hint" in e.value.render()


def test_kubectl_reads_each_kubeconfig(tmp_path) -> None:
    kubectl = component("kubectl")
    store, _ = make(tmp_path)
    for user in ("admin", "controller-manager", "scheduler", "kubelet", "kube-proxy"):
        path = tmp_path / "kubeconfig" / f"{user}.conf"
        r = subprocess.run([str(kubectl), "--kubeconfig", str(path), "config", "view", "--raw", "-o",
                            "jsonpath={.users[0].name} {.clusters[0].cluster.server}"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert r.stdout == f"{user} https://127.0.0.1:6443"


def test_node_makes_its_pki_in_a_child_and_never_imports_cryptography(tmp_path) -> None:
    code = f"""
import sys
from k4s import config
from k4s.cluster import server as node
cfg = config.load(config_file=None, cmdline="", overrides={{
    "data-dir": "{tmp_path}/data", "run-dir": "{tmp_path}/run", "node-name": "n1", "node-ip": "10.0.2.15"}})
first, _, _ = node.ensure_pki(cfg)
again, _, _ = node.ensure_pki(cfg)
print(sorted({{a for _, a, _ in first}}), sorted({{a for _, a, _ in again}}), len(first) == len(again) > 5,
      any(m.startswith("cryptography") for m in sys.modules))
"""
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "['created'] ['kept'] True False", r.stderr
    ok = subprocess.run(["openssl", "verify", "-CAfile", tmp_path / "data/pki/ca.crt",
                         tmp_path / "data/pki/apiserver.crt"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr


def test_node_pki_error_is_one_line(tmp_path) -> None:
    from k4s import config
    from k4s.cluster import server as node
    from k4s.errors import K4sError

    (tmp_path / "file").write_text("")
    cfg = config.load(config_file=None, cmdline="", overrides={
        "data-dir": str(tmp_path / "file" / "data"), "run-dir": str(tmp_path / "run"), "node-name": "n1",
        "node-ip": "10.0.2.15"})
    with pytest.raises(K4sError) as e:
        node.ensure_pki(cfg)
    assert e.value.message.startswith("PKI: ") and "\n" not in e.value.message


def test_a_crash_between_ca_key_and_certificate_is_recovered(tmp_path) -> None:
    """pki init writes the key first: a crash before the certificate leaves a key alone."""
    store, ident = make(tmp_path)
    want = pki.spki_hash_pem(store.crt("ca").read_bytes())
    store.crt("ca").unlink()
    results = {r.name: r for r in store.ensure(ident)}
    assert results["ca"].action == "recovered"
    assert pki.spki_hash_pem(store.crt("ca").read_bytes()) == want  # the same identity: the same pin
    assert openssl_verify(store.crt("ca"), store.crt("apiserver")).returncode == 0


def test_ca_hash_is_kubeadms_spki_pin(tmp_path) -> None:
    store, _ = make(tmp_path)
    der = subprocess.run([tool("openssl"), "x509", "-in", str(store.crt("ca")), "-pubkey", "-noout"],
                         capture_output=True, check=True).stdout
    spki = subprocess.run([tool("openssl"), "pkey", "-pubin", "-outform", "der"], input=der, capture_output=True,
                          check=True).stdout
    import hashlib
    assert pki.spki_hash_pem(store.crt("ca").read_bytes()) == "sha256:" + hashlib.sha256(spki).hexdigest()


def test_operator_ca_joins_the_client_ca_bundle_and_must_be_a_ca(tmp_path) -> None:
    store, ident = make(tmp_path)
    op_key, op_cert = pki.issue_ca(pki.CA("operator", "k4s-operator-ca"))
    store.crt(pki.OPERATOR_CA).write_bytes(pki.cert_pem(op_cert))
    store.ensure(ident)
    bundle = store.crt(pki.CLIENT_CA_BUNDLE).read_bytes()
    assert bundle.count(b"BEGIN CERTIFICATE") == 2 and pki.cert_pem(op_cert) in bundle
    leaf = next(x for x in pki.leaves(ident) if x.name == "admin")
    store.crt(pki.OPERATOR_CA).write_bytes(pki.cert_pem(pki.issue_leaf(leaf, op_key, op_cert)[1]))
    with pytest.raises(pki.K4sError, match="not a CA certificate"):
        store.ensure(ident)


def test_secrets_at_rest_use_secretbox_with_a_node_made_key(tmp_path) -> None:
    import yaml

    from k4s.cluster.components import apiserver
    from tests.unit.test_components import node

    n = node(tmp_path)
    doc = yaml.safe_load(open(apiserver.encryption_config(n)).read())
    providers = doc["resources"][0]["providers"]
    assert list(providers[0]) == ["secretbox"] and providers[-1] == {"identity": {}}
    assert len(__import__("base64").b64decode(providers[0]["secretbox"]["keys"][0]["secret"])) == 32
    assert stat.S_IMODE(n.certs.encryption_config.stat().st_mode) == 0o600
    assert apiserver.encryption_config(n) and yaml.safe_load(n.certs.encryption_config.read_text()) == doc  # kept


def test_the_renewal_window_is_a_third_of_a_short_validity_and_never_under_ten_minutes(tmp_path) -> None:
    import datetime as dt

    day = dt.timedelta(days=1)
    assert pki.PKI(tmp_path, tmp_path, 90).renew == 90 * day                     # a year: cert-renew-days
    assert pki.PKI(tmp_path, tmp_path, 90, validity=3 * day).renew == day        # a third of 3 days
    assert pki.PKI(tmp_path, tmp_path, 90, validity=dt.timedelta(minutes=24)).renew == dt.timedelta(minutes=10)


@pytest.mark.parametrize("value, seconds", [("30m", 1800), ("12h", 43200), ("365d", 365 * 86400)])
def test_cert_validity_is_a_duration(value: str, seconds: int) -> None:
    from k4s import config

    assert config.load(config_file=None, cmdline="", overrides={"cert-validity": value}).cert_validity == seconds


@pytest.mark.parametrize("value, message", [("5m", "out of range"), ("1y", "not a duration"), ("", "not a duration")])
def test_a_bad_cert_validity_is_one_line(value: str, message: str) -> None:
    from k4s import config
    from k4s.errors import ConfigError

    with pytest.raises(ConfigError, match=message):
        config.load(config_file=None, cmdline="", overrides={"cert-validity": value})
