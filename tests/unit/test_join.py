"""Joining: kubeadm's discovery check, the serving-certificate approver's rules, tokens."""

from __future__ import annotations

import base64
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k4s.cluster import addons, approver, join
from k4s.cluster.pki import spki_hash_pem
from k4s.errors import K4sError
from k4s.host import tokens

# cluster-info as a k4s server published it, signed by its controller-manager's bootstrapsigner
# (upstream's go-jose) for token gdyooh.7bzi3j4aj68nsd46: an independent check of our JWS code.
CLUSTER_INFO = json.loads((Path(__file__).parent / "data" / "cluster-info.json").read_text())["data"]
TOKEN = join.Token.parse("gdyooh.7bzi3j4aj68nsd46")


def ca_of(info: dict) -> bytes:
    return addons.read_cluster_info(info["kubeconfig"])[1]


def test_upstream_signature_verifies() -> None:
    assert join.jws_matches(CLUSTER_INFO["kubeconfig"], CLUSTER_INFO["jws-kubeconfig-gdyooh"], TOKEN)


@pytest.mark.parametrize("token", ["gdyooh.7bzi3j4aj68nsd47", "gdyoo0.7bzi3j4aj68nsd46"])
def test_another_token_does_not_verify(token: str) -> None:
    assert not join.jws_matches(CLUSTER_INFO["kubeconfig"], CLUSTER_INFO["jws-kubeconfig-gdyooh"],
                                join.Token.parse(token))


def test_a_changed_kubeconfig_does_not_verify() -> None:
    changed = CLUSTER_INFO["kubeconfig"].replace("10.77.0.1", "10.77.0.9")
    assert not join.jws_matches(changed, CLUSTER_INFO["jws-kubeconfig-gdyooh"], TOKEN)


@given(st.text(max_size=200))
def test_garbage_signatures_are_refused_not_raised(sig: str) -> None:
    assert not join.jws_matches(CLUSTER_INFO["kubeconfig"], sig, TOKEN)


def test_alg_none_is_refused() -> None:
    header = join.b64url(json.dumps({"alg": "none", "kid": "gdyooh"}).encode())
    assert not join.jws_matches(CLUSTER_INFO["kubeconfig"], f"{header}..", TOKEN)


class FakeGet:
    def __init__(self, info: dict) -> None:
        self.body = json.dumps({"data": info}).encode()

    def __call__(self, url: str, ctx: object = None, timeout: float = 2.0) -> tuple[int, bytes]:
        return 200, self.body


def test_discovery_refuses_a_wrong_pin(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join.kubeapi, "get", FakeGet(CLUSTER_INFO))
    with pytest.raises(join.Refused, match="is not the pinned k4s.ca-hash"):
        join.discover("https://10.77.0.1:6443", TOKEN, "sha256:" + "0" * 64)


def test_discovery_names_an_unknown_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join.kubeapi, "get", FakeGet(CLUSTER_INFO))
    pin = spki_hash_pem(ca_of(CLUSTER_INFO))
    with pytest.raises(join.Refused, match="token abcdef is not valid for this cluster: unknown or expired"):
        join.discover("https://10.77.0.1:6443", join.Token.parse("abcdef.0123456789abcdef"), pin)


def test_discovery_names_a_wrong_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(join.kubeapi, "get", FakeGet(CLUSTER_INFO))
    pin = spki_hash_pem(ca_of(CLUSTER_INFO))
    with pytest.raises(join.Refused, match="does not match the token's secret"):
        join.discover("https://10.77.0.1:6443", join.Token.parse("gdyooh.0000000000000000"), pin)


# --- the serving-certificate approver ------------------------------------------------------

def csr(user: str = "system:node:w1", groups: tuple[str, ...] = ("system:nodes", "system:authenticated"),
        usages: tuple[str, ...] = ("digital signature", "server auth")) -> dict:
    return {"spec": {"username": user, "groups": list(groups), "usages": list(usages)}}


def names(cn: str = "system:node:w1", dns: tuple[str, ...] = ("w1",), ips: tuple[str, ...] = ("10.77.0.2",),
          **kw: object) -> dict:
    return {"cn": [cn], "orgs": ["system:nodes"], "dns": list(dns), "ips": list(ips), "other_names": False,
            "signature_valid": True, **kw}


ADDRS = {"10.77.0.2"}


def test_a_node_asking_for_itself_is_approved() -> None:
    assert approver.refusal(csr(), names(), ADDRS) is None


@pytest.mark.parametrize("request_, seen, why", [
    (csr(user="system:bootstrap:abcdef", groups=("system:bootstrappers",)), names(), "is not a node"),
    (csr(usages=("digital signature", "client auth")), names(), "are not a serving certificate's"),
    (csr(), names(cn="system:node:w2"), "is not system:node:w1"),
    (csr(), names(dns=("w2",)), "w2 is not node w1's"),
    (csr(), names(ips=("10.77.0.1",)), "10.77.0.1 is not node w1's"),
    (csr(), names(other_names=True), "not only DNS names and IP addresses"),
    (csr(), names(signature_valid=False), "signature is invalid"),
])
def test_anything_else_is_denied_with_the_reason(request_: dict, seen: dict, why: str) -> None:
    assert why in (approver.refusal(request_, seen, ADDRS) or "")


def test_read_request_reads_a_real_csr() -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from k4s.cluster.pki import new_key

    key = new_key()
    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, "system:node:w1")]))
    import ipaddress
    b = b.add_extension(x509.SubjectAlternativeName([x509.DNSName("w1"), x509.IPAddress(ipaddress.ip_address("10.77.0.2"))]),
                        critical=False)
    pem = b.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    seen = approver.read_request(base64.b64encode(pem).decode())
    assert seen == names()
    assert approver.refusal(csr(), seen, ADDRS) is None


# --- tokens -------------------------------------------------------------------------------------

def test_tokens_have_kubeadms_shape_and_differ() -> None:
    a, b = tokens.new_token(), tokens.new_token()
    assert a != b
    from k4s.config import _TOKEN
    assert _TOKEN.fullmatch(f"{a[0]}.{a[1]}")


@pytest.mark.parametrize("text, want", [("24h", dt.timedelta(hours=24)), ("30m", dt.timedelta(minutes=30)),
                                        ("1h30m", dt.timedelta(minutes=90)), ("45s", dt.timedelta(seconds=45))])
def test_ttl(text: str, want: dt.timedelta) -> None:
    assert tokens.parse_ttl(text) == want


@pytest.mark.parametrize("text", ["", "0", "0s", "-1h", "1d", "forever", "24"])
def test_bad_ttl_is_one_clear_error(text: str) -> None:
    with pytest.raises(K4sError):
        tokens.parse_ttl(text)


def test_token_secret_is_what_the_apiserver_reads() -> None:
    now = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
    s = tokens.secret_for("abcdef", "0123456789abcdef", dt.timedelta(hours=2), "test", now)
    data = {k: base64.b64decode(v).decode() for k, v in s["data"].items()}
    assert s["type"] == "bootstrap.kubernetes.io/token"
    assert s["metadata"] == {"name": "bootstrap-token-abcdef", "namespace": "kube-system"}
    assert data["expiration"] == "2026-11-23T14:00:00Z"
    assert data["usage-bootstrap-authentication"] == data["usage-bootstrap-signing"] == "true"
    assert data["auth-extra-groups"].startswith("system:bootstrappers:")


@pytest.mark.parametrize("args, message", [
    (["create", "--kubeconfig", "/nonexistent/kubeconfig"], "cannot read kubeconfig /nonexistent/kubeconfig"),
    (["create", "--ttl", "never", "--kubeconfig", "/nonexistent/kubeconfig"], "--ttl 'never' is not a duration"),
    (["list", "--kubeconfig", "/dev/null"], "is not a kubeconfig with embedded certificates"),
])
def test_token_errors_are_one_line(args: list[str], message: str) -> None:
    from tests.conftest import k4s_cmd

    r = k4s_cmd("token", *args)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and message in r.stderr and "(hint: " in r.stderr, r.stderr


def test_an_unreachable_apiserver_is_one_line(tmp_path: Path) -> None:
    """A kubeconfig for a port nothing listens on."""
    from k4s.cluster import certs, pki
    from tests.conftest import k4s_cmd

    ca = certs.CA("ca", "test-ca")
    ca_key, ca_cert = pki.issue_ca(ca)
    key, cert = pki.issue_leaf(certs.Leaf("admin", ca, "admin"), ca_key, ca_cert)
    kc = tmp_path / "kubeconfig"
    kc.write_text(pki.kubeconfig_text("admin", "https://127.0.0.1:9", pki.cert_pem(cert), pki.key_pem(key),
                                      pki.cert_pem(ca_cert)))
    r = k4s_cmd("token", "list", "--kubeconfig", str(kc))
    assert r.returncode == 1 and "cannot reach the apiserver at 127.0.0.1:9" in r.stderr, r.stderr


def test_a_serving_csr_from_a_node_not_yet_registered_waits() -> None:
    class NoNode:
        def json(self, method: str, path: str, obj: object = None) -> dict:
            raise approver.kubeapi.APIError(404, "not found")

    def never(*_: object) -> dict:
        raise AssertionError("decided too early")

    approver.decide(NoNode(), {"metadata": {"name": "csr-1"}, **csr()}, never)  # type: ignore[arg-type]
