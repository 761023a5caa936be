"""Stage 1's fetch and verify, on the host against a local HTTP server: the code the flash runs."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from k4s.boot import stage1
from k4s.errors import K4sError
from k4s.host import netboot
from k4s.image import manifest
from tests.conftest import tls_pair


@pytest.fixture
def signed(tmp_path):  # type: ignore[no-untyped-def]
    manifest.keygen(tmp_path / "keys")
    (tmp_path / "vmlinuz").write_bytes(b"K" * 5000)
    (tmp_path / "initramfs").write_bytes(b"I" * 300_000)
    (tmp_path / "seed").write_bytes(b"S" * 10)
    payload = tmp_path / "payload"
    netboot.prepare(payload, tmp_path / "vmlinuz", [tmp_path / "initramfs", tmp_path / "seed"], "console=ttyS0",
                    "http://10.0.2.2:8080/", key=tmp_path / "keys" / "signing.key")
    return payload, manifest.public_key(tmp_path / "keys" / "signing.pub")


def flaky_server(directory: Path, failures: int) -> ThreadingHTTPServer:
    """Serves directory, but drops the first `failures` connections (a network that is not up yet)."""
    left = [failures]

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            if left[0] > 0:
                left[0] -= 1
                self.close_connection = True
                self.connection.shutdown(2)
                return
            path = directory / self.path.lstrip("/")
            if not path.is_file():
                self.send_error(404)
                return
            data = path.read_bytes()
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *a: object) -> None:
            pass

    srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    return srv


def test_the_ipxe_script_loads_the_kernel_and_every_initrd_in_order(signed) -> None:
    payload, _ = signed
    script = (payload / "boot.ipxe").read_text().splitlines()
    assert script[0] == "#!ipxe" and script[-1] == "boot"
    assert "kernel http://10.0.2.2:8080/vmlinuz console=ttyS0" in script
    assert [ln for ln in script if ln.startswith("initrd")] == ["initrd http://10.0.2.2:8080/initramfs",
                                                               "initrd http://10.0.2.2:8080/seed"]


def test_fetch_verified_retries_the_network_then_verifies(signed, tmp_path, monkeypatch, capsys) -> None:
    payload, pub = signed
    monkeypatch.setattr(stage1, "BACKOFF", (0.01, 0.05))
    srv = flaky_server(payload, failures=2)
    try:
        m = stage1.fetch_verified(f"http://127.0.0.1:{srv.server_address[1]}/", tmp_path / "got", pub)
    finally:
        srv.shutdown()
    assert [a.name for a in m.artifacts] == ["vmlinuz", "initramfs", "seed"] and m.cmdline == "console=ttyS0"
    assert (tmp_path / "got" / "initramfs").read_bytes() == b"I" * 300_000
    assert capsys.readouterr().err.count("event=retry") == 2  # a console line per try


def test_a_tampered_artifact_is_refused_without_retrying(signed, tmp_path, monkeypatch) -> None:
    payload, pub = signed
    f = payload / "initramfs"
    data = bytearray(f.read_bytes())
    data[1234] ^= 1
    f.unlink()
    f.write_bytes(bytes(data))
    fetched: list[str] = []
    real = stage1.Fetch._chunks

    def counting(self, name):  # type: ignore[no-untyped-def]
        fetched.append(name)
        return real(self, name)

    monkeypatch.setattr(stage1.Fetch, "_chunks", counting)
    srv = flaky_server(payload, failures=0)
    try:
        with pytest.raises(manifest.VerifyError, match="initramfs: sha256 differs from the signed manifest"):
            stage1.fetch_verified(f"http://127.0.0.1:{srv.server_address[1]}/", tmp_path / "got", pub)
    finally:
        srv.shutdown()
    assert fetched.count("initramfs") == 1 and "seed" not in fetched  # stopped there, not retried


def test_only_http_payloads_and_a_bounded_number_of_tries(monkeypatch) -> None:
    with pytest.raises(K4sError, match="has no CA bundle"):
        stage1.Fetch("https://example.invalid/p/", ca=Path("/nonexistent/payload-ca.pem"))
    monkeypatch.setattr(stage1, "BACKOFF", (0.0, 0.0))
    with pytest.raises(K4sError, match=f"after {stage1.TRIES} tries"):
        stage1.Fetch("http://127.0.0.1:9/").get("manifest.json", lambda cs: b"".join(cs))


def test_https_payloads_verify_the_server_against_the_built_in_ca(tmp_path, monkeypatch) -> None:
    from k4s.host import netboot

    ca, crt, key = tls_pair(tmp_path, "good")
    other_ca, _, _ = tls_pair(tmp_path, "other")
    d = tmp_path / "payload"
    d.mkdir()
    (d / netboot.SCRIPT).write_text("#!ipxe\n")
    (d / "manifest.json").write_text("{}")
    srv = netboot.serve_in_thread(d, tls=(crt, key))
    try:
        url = f"https://127.0.0.1:{srv.server_address[1]}/"
        assert stage1.Fetch(url, ca=ca).get("manifest.json", lambda cs: b"".join(cs)) == b"{}"
        monkeypatch.setattr(stage1, "BACKOFF", (0.0, 0.0))
        tries = []
        with pytest.raises(stage1.CertificateError, match="does not verify with the built-in CA bundle"):
            stage1.Fetch(url, ca=other_ca).get("manifest.json", lambda cs: tries.append(1) or b"".join(cs))
        assert len(tries) == 1  # refused at once, not retried
    finally:
        srv.shutdown()


def test_a_payload_ca_bundle_is_checked_before_it_goes_into_the_image(tmp_path) -> None:
    from k4s.mkimage import check_ca_bundle

    ca, crt, key = tls_pair(tmp_path, "b")
    check_ca_bundle(ca)
    mixed = tmp_path / "mixed.pem"
    mixed.write_bytes(ca.read_bytes() + key.read_bytes())
    for bad, why in ((mixed, "holds a private key"), (key, "not a PEM CA bundle"), (tmp_path / "none", "not a PEM")):
        with pytest.raises(K4sError, match=why):
            check_ca_bundle(bad)


# --- a worker's join: minted per machine by netboot serve, wrapped by stage 1 -----------------------

JOIN = "k4s.node-name=k4s-007702 k4s.token=abcdef.0123456789abcdef"


def test_netboot_serves_each_machine_its_own_join(signed) -> None:
    import urllib.error
    import urllib.request

    from k4s.config import load
    from k4s.image import cpio

    payload, _ = signed
    asked: list[str] = []

    def mint(mac: str) -> str:
        asked.append(mac)
        return JOIN.replace("k4s-007702", netboot.node_name_for(mac))

    srv = netboot.serve_in_thread(payload, mint=mint)
    base = f"http://127.0.0.1:{srv.server_address[1]}/join/"
    try:
        words = urllib.request.urlopen(base + "525400007702", timeout=10).read().decode()
        segment = urllib.request.urlopen(base + "525400007703.cpio", timeout=10).read()
        for bad in ("../manifest.json", "nothex", "5254000077"):
            with pytest.raises(urllib.error.HTTPError) as e:
                urllib.request.urlopen(base + bad, timeout=10)
            assert e.value.code == 404
    finally:
        srv.shutdown()
    assert asked == ["525400007702", "525400007703"]
    assert "k4s.node-name=k4s-007702" in words and "k4s.token=" in words
    (member,) = list(cpio.read(segment))
    assert member.name == "etc/k4s/join" and member.mode & 0o777 == 0o600 and b"k4s-007703" in member.data
    path = payload.parent / "join"
    path.write_bytes(member.data)
    public = "k4s.role=agent k4s.server=https://10.77.0.1:6443 k4s.ca-hash=sha256:" + "a" * 64
    assert load("/dev/null", cmdline=public, join_secret=str(path)).node_name == "k4s-007703"


def test_a_server_without_a_kubeconfig_mints_nothing(signed) -> None:
    import urllib.error
    import urllib.request

    payload, _ = signed
    srv = netboot.serve_in_thread(payload)
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"http://127.0.0.1:{srv.server_address[1]}/join/525400007702", timeout=10)
    finally:
        srv.shutdown()
    assert e.value.code == 404


def test_stage1_wraps_the_join_it_fetched_and_refuses_any_other_key(signed, tmp_path, monkeypatch) -> None:
    from k4s.errors import ConfigError
    from k4s.image import cpio

    payload, _ = signed
    none = tmp_path / "none"  # stage 1 booted without its own join segment
    nic = tmp_path / "sys"
    handed = "k4s.node-name=k4s-007702 k4s.token=abcdef.0123456789abcdef"  # what JoinMinter answers
    answer = [handed]
    ca, crt, key = tls_pair(tmp_path, "payload")
    srv = netboot.serve_in_thread(payload, tls=(crt, key), mint=lambda mac: answer[0])
    plain = netboot.serve_in_thread(payload, mint=lambda mac: answer[0])
    real_path = Path

    def fake_path(p: str) -> Path:  # /sys/class/net/<iface>/address
        return nic / "address" if str(p).startswith("/sys/class/net/") else real_path(p)
    nic.mkdir()
    (nic / "address").write_text("52:54:00:00:77:02\n")
    monkeypatch.setattr(stage1, "Path", fake_path)
    try:
        f = stage1.Fetch(f"https://127.0.0.1:{srv.server_address[1]}/", ca=ca)
        out = stage1.fetch_join(f, "eth0", tmp_path / "join.cpio", none)
        assert out is not None
        (member,) = list(cpio.read(out.read_bytes()))
        assert member.name == "etc/k4s/join" and member.data.decode().strip() == handed
        # the server and the CA pin come only from the signed command line: a join naming them is refused
        answer[0] = handed + " k4s.server=https://10.9.9.9:6443"
        with pytest.raises(ConfigError, match="key 'server' may not be set there"):
            stage1.fetch_join(f, "eth0", tmp_path / "join2.cpio", none)
        assert not (tmp_path / "join2.cpio").exists()
        # over plain http, nothing is fetched (anyone on the way would read the token)
        assert stage1.fetch_join(stage1.Fetch(f"http://127.0.0.1:{plain.server_address[1]}/"), "eth0",
                                 tmp_path / "join3.cpio", none) is None
    finally:
        srv.shutdown()
        plain.shutdown()


def test_an_idle_client_does_not_stall_the_https_payload_server(signed, tmp_path) -> None:
    """Clients that connect and never finish a TLS handshake hold their own threads: a machine
    fetching its payload is served at once."""
    import socket
    import time

    payload, _ = signed
    ca, crt, key = tls_pair(tmp_path, "payload")
    srv = netboot.serve_in_thread(payload, tls=(crt, key))
    idle = [socket.create_connection(("127.0.0.1", srv.server_address[1]), timeout=5) for _ in range(10)]
    try:
        t0 = time.monotonic()
        f = stage1.Fetch(f"https://127.0.0.1:{srv.server_address[1]}/", ca=ca)
        raw = f.get("manifest.json", lambda cs: b"".join(cs))
        took = time.monotonic() - t0
    finally:
        for s in idle:
            s.close()
        srv.shutdown()
    assert raw.startswith(b"{") and took < 5.0, took
