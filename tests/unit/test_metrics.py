"""The metrics endpoint's data and its gate: what a scrape shows, who gets 401 or 403."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from k4s.cluster import metrics, renew
from k4s.layout import Paths


@pytest.fixture
def paths(tmp_path: Path) -> Paths:
    p = Paths.of(tmp_path / "data", tmp_path / "run")
    p.run.mkdir(parents=True)
    p.status.write_text(json.dumps({"supervisor_pid": 1, "started": 12.5, "components": {
        "etcd": {"state": "ready", "pid": 7, "restarts": 0, "ready": True, "started_after": 0.1,
                 "ready_after": 4.0, "ready_at": 4.1, "up": 60, "last_exit": ""},
        "kubelet": {"state": "backoff", "pid": None, "restarts": 3, "ready": False, "started_after": 9.0,
                    "ready_after": None, "ready_at": 20.0, "up": None, "last_exit": "code 1"}}}))
    renew.write_status(p.certs, {"ca": 2_000_000_000.0, "apiserver": 1_900_000_000.0}, 2)
    return p


def samples(paths: Paths) -> dict[tuple[str, tuple], float]:
    out = {}
    for fam in text_string_to_metric_families(metrics.exposition(paths).decode()):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_a_scrape_has_components_timeline_memory_and_certificates(paths: Paths) -> None:
    s = samples(paths)
    assert s[("k4s_component_up", (("component", "etcd"),))] == 1.0
    assert s[("k4s_component_up", (("component", "kubelet"),))] == 0.0
    assert s[("k4s_component_restarts_total", (("component", "kubelet"),))] == 3.0
    assert s[("k4s_component_ready_seconds", (("component", "etcd"),))] == 4.0
    assert s[("k4s_boot_component_ready_seconds", (("component", "etcd"),))] == pytest.approx(16.6)
    assert s[("k4s_certificate_expiry_timestamp_seconds", (("ca", "true"), ("certificate", "ca")))] == 2e9
    assert s[("k4s_certificate_renewals_total", ())] == 2.0
    kinds = {dict(k[1])["kind"] for k in s if k[0] == "k4s_memory_bytes"}
    assert {"used", "available", "anon", "shmem", "kernel", "total"} <= kinds


class FakeAuthz:
    def __init__(self, users: dict[str, tuple[str, list[str]]], allowed: set[str]) -> None:
        self.users, self.allowed_users = users, allowed

    def token_identity(self, token: str) -> tuple[str, list[str]] | None:
        return self.users.get(token)

    def allowed(self, user: str, groups: list[str], path: str) -> bool:
        return user in self.allowed_users


def endpoint(paths: Paths) -> metrics.Endpoint:
    authz = FakeAuthz({"good": ("system:serviceaccount:mon:prom", [])}, {"system:serviceaccount:mon:prom", "admin"})
    return metrics.Endpoint(paths, (Path("/x"), Path("/y")), Path("/z"), authz)  # type: ignore[arg-type]


PEER_ADMIN = {"subject": ((("commonName", "admin"),), (("organizationName", "system:masters"),))}
PEER_NOBODY = {"subject": ((("commonName", "nobody"),),)}


def test_the_gate_answers_401_without_credentials_403_without_rights_200_with_both(paths: Paths) -> None:
    e = endpoint(paths)
    assert e.answer("/metrics", None, None)[0] == 401
    assert e.answer("/metrics", None, "Bearer wrong")[0] == 401
    assert e.answer("/metrics", PEER_NOBODY, None)[:2] == (403, "text/plain")
    status, ctype, body = e.answer("/metrics", None, "Bearer good")
    assert status == 200 and ctype.startswith("text/plain; version=") and b"k4s_component_up" in body
    status, ctype, body = e.answer("/status", PEER_ADMIN, None)
    assert status == 200 and json.loads(body)["components"]["etcd"]["ready"] is True
    assert e.answer("/debug/pprof", PEER_ADMIN, None)[0] == 404


def test_a_certificate_identity_is_cn_and_organizations() -> None:
    assert metrics.cert_identity(PEER_ADMIN) == ("admin", ["system:masters"])
    assert metrics.cert_identity({"subject": ()}) is None
    assert metrics.cert_identity(None) is None


def test_the_renewal_check_runs_every_twentieth_of_the_validity_within_bounds() -> None:
    assert renew.interval(365 * 86400) == 3600
    assert renew.interval(1800) == 90
    assert renew.interval(60) == 20


def test_fifty_idle_connections_do_not_delay_an_authenticated_scrape(paths: Paths, tmp_path: Path) -> None:
    """Clients that connect and never finish a TLS handshake each hold their own thread; the
    accept loop goes on, and a scrape with a token is answered at once."""
    import http.client
    import socket
    import ssl
    import threading
    import time

    from k4s import tlsserve
    from k4s.cluster import certs, pki

    ca = certs.CA("ca", "test-ca")
    ca_key, ca_cert = pki.issue_ca(ca)
    key, cert = pki.issue_leaf(certs.Leaf("serving", ca, "node", usages=(certs.SERVER,), ip_addresses=("127.0.0.1",)),
                               ca_key, ca_cert)
    for name, data in (("s.crt", pki.cert_pem(cert)), ("s.key", pki.key_pem(key)), ("ca.crt", pki.cert_pem(ca_cert))):
        (tmp_path / name).write_bytes(data)
    e = endpoint(paths)
    e.serving, e.client_ca = (tmp_path / "s.crt", tmp_path / "s.key"), tmp_path / "ca.crt"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    stop = threading.Event()
    threading.Thread(target=e.serve, args=("127.0.0.1", port, stop), daemon=True).start()
    idle = []
    try:
        for _ in range(100):
            try:
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
                break
            except ConnectionRefusedError:
                time.sleep(0.05)
        idle += [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(49)]
        ctx = ssl.create_default_context(cafile=str(tmp_path / "ca.crt"))
        t0 = time.monotonic()
        conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=30)
        conn.request("GET", "/metrics", headers={"Authorization": "Bearer good"})
        r = conn.getresponse()
        body = r.read()
        took = time.monotonic() - t0
        conn.close()
    finally:
        stop.set()
        for s in idle:
            s.close()
    assert r.status == 200 and b"k4s_component_up" in body
    assert took < tlsserve.HANDSHAKE_TIMEOUT, took  # not queued behind the idle handshakes


def test_a_refusal_is_cached_for_less_time_than_a_grant(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(metrics.time, "monotonic", lambda: clock[0])
    asked: list[str] = []
    auth = metrics.Authorizer(lambda: None)  # type: ignore[arg-type,return-value]
    answer = {"yes": True, "no": False}
    for key in ("yes", "no"):
        auth._cached(key, lambda k=key: asked.append(k) or answer[k])
    clock[0] += metrics.DENIED_CACHE + 1  # the refusal is asked again, the grant is not yet
    for key in ("yes", "no"):
        auth._cached(key, lambda k=key: asked.append(k) or answer[k])
    assert asked == ["yes", "no", "no"] and metrics.DENIED_CACHE < metrics.AUTH_CACHE
