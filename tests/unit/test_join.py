"""Joining: kubeadm's discovery check, the serving-certificate approver's rules, tokens."""

from __future__ import annotations

import base64
import copy
import datetime as dt
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from k4s.cluster import addons, approver, certs, join
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


def test_a_try_after_a_lost_answer_polls_the_request_the_first_one_made(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CSR's name is a digest of its key and subject (the kubelet's way): a second try of the
    same join meets 409 and waits for that request, instead of making a second one, which the
    approver would refuse (a token joins one request)."""
    made: dict[str, dict] = {}

    class Api:
        def __init__(self, *_a: object, **_k: object) -> None:
            pass

        def json(self, method: str, path: str, obj: dict | None = None) -> dict:
            if method == "POST":
                name = obj["metadata"]["name"]  # type: ignore[index]
                if name in made:
                    raise join.kubeapi.APIError(409, "already exists")
                made[name] = {**obj, "status": {}}  # type: ignore[dict-item]
                raise join.kubeapi.APIError(504, "the answer was lost")  # as a timed-out read
            made[path.rsplit("/", 1)[1]]["status"] = {"certificate": base64.b64encode(b"CERT").decode()}
            return made[path.rsplit("/", 1)[1]]

    monkeypatch.setattr(join.kubeapi, "Client", Api)
    request = join.node_csr("w1")
    assert request[2].startswith("node-csr-") and request[2] != join.node_csr("w1")[2]  # a new key, a new name
    with pytest.raises(join.kubeapi.APIError):
        join.request_client_cert("https://10.77.0.1:6443", b"", TOKEN, request)
    assert join.request_client_cert("https://10.77.0.1:6443", b"", TOKEN, request) == (b"CERT", request[1])
    assert list(made) == [request[2]]


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


class FakeAPI:
    """The apiserver as the approver sees it: CSRs by signer, nodes, token Secrets; what it was told."""

    def __init__(self, csrs: list[dict], nodes: dict[str, dict] | None = None, tokens_: dict[str, dict] | None = None):
        self.csrs, self.nodes, self.tokens = csrs, nodes or {}, tokens_ or {}
        self.verdicts: dict[str, tuple[str, str]] = {}
        self.deleted: list[str] = []
        self.pins: dict | None = None
        self.leases: dict[str, str] = {}  # node -> renewTime

    # the real client's 404 handling, over json below
    get_or_none = approver.kubeapi.Client.get_or_none
    delete_or_none = approver.kubeapi.Client.delete_or_none
    or_none = approver.kubeapi.Client.or_none

    def json(self, method: str, path: str, obj: dict | None = None) -> dict:
        import urllib.parse

        if method == "GET" and path.startswith(approver.CSR_API + "?"):
            signer = urllib.parse.unquote(path.split("spec.signerName%3D")[1])
            return {"items": [c for c in self.csrs if c["spec"]["signerName"] == signer]}
        if method == "GET" and path.startswith("/api/v1/nodes/"):
            name = urllib.parse.unquote(path.rsplit("/", 1)[1])
            if name in self.nodes:
                return self.nodes[name]
        if method == "GET" and path.startswith(approver.TOKEN_SECRETS + "?"):
            return {"items": copy.deepcopy(list(self.tokens.values()))}
        if method == "GET" and path.startswith(approver.CSR_API + "/"):
            for c in self.csrs:
                if c["metadata"]["name"] == path.rsplit("/", 1)[1]:
                    return c
        if path.startswith(approver.TOKEN_SECRETS + "/bootstrap-token-"):
            tid = path.rsplit("-", 1)[1]
            if tid in self.tokens:
                if method == "DELETE":
                    self.deleted.append(tid)
                    return self.tokens.pop(tid)
                if method == "PUT":
                    self.tokens[tid] = copy.deepcopy(obj)  # type: ignore[assignment]
                return copy.deepcopy(self.tokens[tid])
        if method == "GET" and "/leases/" in path and path.rsplit("/", 1)[1] in self.leases:
            return {"spec": {"renewTime": self.leases[path.rsplit("/", 1)[1]]}}
        if path.startswith(approver.Pins.PATH.rsplit("/", 1)[0]):
            if method == "GET" and self.pins is not None:
                return self.pins
            if method in ("POST", "PUT"):
                self.pins = obj
                return obj  # type: ignore[return-value]
            raise approver.kubeapi.APIError(404, "not found")
        if method == "PUT" and path.endswith("/approval"):
            c = obj["status"]["conditions"][-1]  # type: ignore[index]
            self.verdicts[obj["metadata"]["name"]] = (c["type"], c["message"])  # type: ignore[index]
            return obj  # type: ignore[return-value]
        raise approver.kubeapi.APIError(404, "not found")


def in_process(fn, _timeout: float = 0):  # type: ignore[no-untyped-def]
    return fn()


def csr_pem(cn: str, version_1: bool = False, sans: tuple[str, ...] = ()) -> str:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from k4s.cluster.pki import new_key

    b = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"), x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
    if sans:
        import ipaddress
        b = b.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(s)) if s[0].isdigit() else x509.DNSName(s) for s in sans]), False)
    der = bytearray(b.sign(new_key(), hashes.SHA256()).public_bytes(serialization.Encoding.DER))
    if version_1:
        # CertificationRequestInfo's version INTEGER 0 -> 1: the apiserver takes it, cryptography does not
        at = der.find(b"\x02\x01\x00")
        der[at + 2] = 1
    pem = b"-----BEGIN CERTIFICATE REQUEST-----\n" + base64.encodebytes(bytes(der)) + b"-----END CERTIFICATE REQUEST-----\n"
    return base64.b64encode(pem).decode()


def client_csr(name: str, node: str, token_id: str = "abcdef", **kw: object) -> dict:
    return {"metadata": {"name": name}, "status": {},
            "spec": {"signerName": approver.CLIENT_SIGNER, "username": f"system:bootstrap:{token_id}",
                     "groups": ["system:bootstrappers", "system:bootstrappers:k4s:worker", "system:authenticated"],
                     "usages": ["digital signature", "client auth"], "request": csr_pem(f"system:node:{node}", **kw)}}


def serving_csr(name: str, node: str, sans: tuple[str, ...], **kw: object) -> dict:
    return {"metadata": {"name": name}, "status": {},
            "spec": {"signerName": approver.SIGNER, "username": f"system:node:{node}",
                     "groups": ["system:nodes", "system:authenticated"],
                     "usages": ["digital signature", "server auth"], "request": csr_pem(f"system:node:{node}", sans=sans, **kw)}}


def token_secret(bound: str = "", reusable: bool = False) -> dict:
    return tokens.secret_for("abcdef", "0123456789abcdef", dt.timedelta(hours=1), "t", node_name=bound, reusable=reusable)


def node_obj(ready: str = "True", ip: str = "10.77.0.2") -> dict:
    return {"status": {"conditions": [{"type": "Ready", "status": ready}],
                       "addresses": [{"type": "InternalIP", "address": ip}]}}


def test_a_token_joins_once_and_is_spent_after_its_certificate() -> None:
    api = FakeAPI([client_csr("c1", "w1"), client_csr("c2", "w2")], tokens_={"abcdef": token_secret()})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Approved"
    # the second machine with the same token (a second name), in the same round: refused
    assert api.verdicts["c2"] == ("Denied", "token abcdef is spent: request c1 joined with it")
    # kept while the machine waits for its certificate: it asks for it with the token
    assert not api.deleted and api.tokens["abcdef"]["metadata"]["annotations"][approver.USED_BY_ANNOTATION] == "c1"
    assert [(t.id, t.used_by) for t in tokens.listed(api)] == [("abcdef", "c1")]  # type: ignore[arg-type]  # `used`
    c1 = api.csrs[0]
    c1["status"]["certificate"] = "LS0t"
    approver.spend_used(api, now=1000.0)  # type: ignore[arg-type]
    approver.spend_used(api, now=1000.0 + approver.SPEND_GRACE - 1)  # type: ignore[arg-type]
    assert not api.deleted
    approver.spend_used(api, now=1000.0 + approver.SPEND_GRACE)  # type: ignore[arg-type]
    assert api.deleted == ["abcdef"]
    # once deleted, the token is refused outright
    api.csrs.append(client_csr("c3", "w3"))
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c3"] == ("Denied", "token abcdef no longer exists (used, expired or deleted)")


@pytest.mark.parametrize("fate", ["Denied", "Failed", "gone"])
def test_a_used_token_whose_request_came_to_nothing_is_spent_at_once(fate: str) -> None:
    token = token_secret()
    token["metadata"]["annotations"] = {approver.USED_BY_ANNOTATION: "c1"}
    csrs = [] if fate == "gone" else [{**client_csr("c1", "w1"), "status": {"conditions": [{"type": fate}]}}]
    api = FakeAPI(csrs, tokens_={"abcdef": token})
    approver.spend_used(api)  # type: ignore[arg-type]
    assert api.deleted == ["abcdef"]


def test_a_used_token_is_kept_while_its_request_waits_for_the_signer() -> None:
    api = FakeAPI([client_csr("c1", "w1")], tokens_={"abcdef": token_secret()})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    approver.spend_used(api, now=10**10)  # type: ignore[arg-type]
    assert not api.deleted and api.verdicts["c1"][0] == "Approved"


def test_a_reusable_token_is_kept() -> None:
    api = FakeAPI([client_csr("c1", "w1"), client_csr("c2", "w2")], tokens_={"abcdef": token_secret(reusable=True)})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert [v[0] for v in api.verdicts.values()] == ["Approved", "Approved"] and not api.deleted


@pytest.mark.parametrize("node, token, nodes, why", [
    ("server-1", token_secret(), {}, "server-1 is the server's own node"),
    ("w1", token_secret(), {"w1": node_obj("True")}, "node w1 exists and is Ready"),
    ("w2", token_secret(bound="w1"), {}, "token abcdef is bound to node w1, not w2"),
    ("w1", None, {}, "token abcdef no longer exists"),
    ("w1", tokens.secret_for("abcdef", "0123456789abcdef", dt.timedelta(hours=1), "t", group=certs.CONTROL_PLANE_GROUP),
     {}, "token abcdef is a server's join"),
])
def test_a_token_may_not_become_another_node(node: str, token: dict | None, nodes: dict, why: str) -> None:
    api = FakeAPI([client_csr("c1", node)], nodes=nodes, tokens_={"abcdef": token} if token else {})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Denied" and why in api.verdicts["c1"][1], api.verdicts
    assert not api.deleted  # a refused request does not spend the token, nor mark it used
    assert approver.USED_BY_ANNOTATION not in (api.tokens.get("abcdef", {}).get("metadata", {}).get("annotations") or {})


def test_a_rebooted_machine_takes_its_node_back() -> None:
    api = FakeAPI([client_csr("c1", "w1")], nodes={"w1": node_obj("Unknown")}, tokens_={"abcdef": token_secret("w1")})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Approved"


def test_a_csr_that_does_not_parse_is_denied_and_the_round_goes_on() -> None:
    bad = serving_csr("bad", "w1", ("w1", "10.77.0.2"), version_1=True)
    good = serving_csr("good", "w1", ("w1", "10.77.0.2"))
    api = FakeAPI([bad, good], nodes={"w1": node_obj()})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["bad"][0] == "Denied" and "does not parse" in api.verdicts["bad"][1], api.verdicts
    assert api.verdicts["good"][0] == "Approved"


def test_a_serving_csr_from_a_node_not_yet_registered_waits() -> None:
    api = FakeAPI([serving_csr("s1", "w1", ("w1",))])

    def never(*_: object) -> dict:
        raise AssertionError("decided too early")

    approver.decide_all(api, never, "server-1")  # type: ignore[arg-type]
    assert not api.verdicts


def reserved() -> approver.Reserved:
    from k4s import config

    cfg = config.load("/dev/null", overrides={"tls-san": "api.example,10.77.0.100"})
    return approver.Reserved.of(cfg, {"10.77.0.1"})


@pytest.mark.parametrize("node, seen, addresses, why", [
    # a node named like the apiserver's service, asking for the service IP and its own address
    ("kubernetes.default.svc.cluster.local", names("system:node:kubernetes.default.svc.cluster.local",
     dns=("kubernetes.default.svc.cluster.local",), ips=("10.43.0.1", "10.77.0.2")), {"10.43.0.1", "10.77.0.2"},
     "10.43.0.1 is in the pod or service network 10.43.0.0/16"),
    ("kubernetes.default.svc.cluster.local", names("system:node:kubernetes.default.svc.cluster.local",
     dns=("kubernetes.default.svc.cluster.local",), ips=("10.77.0.2",)), {"10.77.0.2"},
     "is a name clients use for the cluster's services"),
    ("w1", names(ips=("10.77.0.1",)), {"10.77.0.1"}, "10.77.0.1 is the server's address"),
    ("w1", names(ips=("10.77.0.100",)), {"10.77.0.100"}, "10.77.0.100 is the server's address"),
    ("w1", names(ips=("10.42.3.1",)), {"10.42.3.1"}, "in the pod or service network 10.42.0.0/16"),
    ("w1", names(ips=("127.0.0.1",)), {"127.0.0.1"}, "is not a node's address"),
    ("api.example", names("system:node:api.example", dns=("api.example",), ips=()), set(), "clients use"),
    # an IPv4-mapped IPv6 address is the IPv4 one to Go's TLS stack
    ("w1", names(ips=("::ffff:10.77.0.1",)), {"::ffff:10.77.0.1"}, "::ffff:10.77.0.1 is not an IPv4 address"),
])
def test_a_node_cannot_get_a_serving_certificate_for_the_cluster(node: str, seen: dict, addresses: set[str],
                                                                  why: str) -> None:
    """Its Node's addresses are what the node itself wrote: they are not enough."""
    got = approver.refusal(csr(user=f"system:node:{node}"), seen, addresses, reserved())
    assert got and why in got, got


def test_reserved_keeps_a_normal_node() -> None:
    assert approver.refusal(csr(), names(), ADDRS, reserved()) is None


def test_a_node_keeps_the_address_its_first_certificate_named() -> None:
    """A node writes its own status: after its first serving certificate, an address it did not
    have then, or one another node holds, is refused; a join the server approves starts afresh."""
    api = FakeAPI([serving_csr("s1", "w1", ("w1", "10.77.0.2"))], nodes={"w1": node_obj(ip="10.77.0.2")})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["s1"][0] == "Approved" and api.pins["data"] == {"w1": "10.77.0.2"}  # type: ignore[index]
    # w1 now reports w2's address (patched its own status) and asks for it
    api.csrs = [serving_csr("s2", "w1", ("w1", "10.77.0.3"))]
    api.nodes["w1"] = node_obj(ip="10.77.0.3")
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["s2"][0] == "Denied" and "10.77.0.3 is not the address node w1 first had" in api.verdicts["s2"][1]
    # another node asking for w1's address
    api.csrs = [serving_csr("s3", "w2", ("w2", "10.77.0.2"))]
    api.nodes["w2"] = node_obj(ip="10.77.0.2")
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["s3"] == ("Denied", "10.77.0.2 is node w1's")
    # w1 joins again with a new token (a rebooted RAM-only machine with a new lease): afresh
    api.csrs, api.tokens = [client_csr("c1", "w1")], {"abcdef": token_secret("w1")}
    api.nodes["w1"] = node_obj("Unknown", ip="10.77.0.3")
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Approved" and api.pins["data"] == {}  # type: ignore[index]
    api.csrs = [serving_csr("s4", "w1", ("w1", "10.77.0.3"))]
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["s4"][0] == "Approved" and api.pins["data"] == {"w1": "10.77.0.3"}  # type: ignore[index]


def test_two_requests_for_one_node_in_a_round_are_both_refused() -> None:
    """A token sniffed on the way, racing the real machine: neither gets the name."""
    other = tokens.secret_for("ghijkl", "0123456789abcdef", dt.timedelta(hours=1), "t", node_name="w1")
    api = FakeAPI([client_csr("c1", "w1"), client_csr("c2", "w1", token_id="ghijkl")],
                  tokens_={"abcdef": token_secret("w1"), "ghijkl": other})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert [v[0] for v in api.verdicts.values()] == ["Denied", "Denied"], api.verdicts
    assert "another pending request names node w1" in api.verdicts["c1"][1] and not api.deleted


def test_a_node_whose_kubelet_is_alive_is_not_taken_even_before_it_shows_not_ready() -> None:
    import datetime as dt_

    now = dt_.datetime.now(dt_.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    api = FakeAPI([client_csr("c1", "w1")], nodes={"w1": node_obj("Unknown")}, tokens_={"abcdef": token_secret("w1")})
    api.leases["w1"] = now
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Denied" and "exists and is Ready" in api.verdicts["c1"][1]


def test_a_node_that_said_it_shut_down_is_taken_back_at_once() -> None:
    """A worker powered off cleanly (drained, then Ready False "node is shutting down" once its
    kubelet stopped) boots again at once with a join minted for it: no wait for its Lease to age."""
    import datetime as dt_

    now = dt_.datetime.now(dt_.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    gone = node_obj("False")
    gone["status"]["conditions"][0]["message"] = approver.SHUTTING_DOWN
    api = FakeAPI([client_csr("c1", "w1")], nodes={"w1": gone}, tokens_={"abcdef": token_secret("w1")})
    api.leases["w1"] = now
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Approved", api.verdicts


def test_an_unbound_token_makes_only_new_nodes() -> None:
    api = FakeAPI([client_csr("c1", "w1")], nodes={"w1": node_obj("Unknown")}, tokens_={"abcdef": token_secret()})
    approver.decide_all(api, in_process, "server-1")  # type: ignore[arg-type]
    assert api.verdicts["c1"][0] == "Denied" and "is not bound to it" in api.verdicts["c1"][1]


def test_a_flood_of_requests_is_denied_unread() -> None:
    """One requester's requests past MAX_PENDING are denied without a child to parse each."""
    flood = [serving_csr(f"s{i}", "w1", ("w1", "10.77.0.2")) for i in range(approver.MAX_PENDING + 3)]
    for i, c in enumerate(flood):
        c["metadata"]["creationTimestamp"] = f"2026-12-06T10:00:{i:02d}Z"
    api = FakeAPI(flood, nodes={"w1": node_obj()})
    parsed = []

    def counting(fn, _timeout: float = 0):  # type: ignore[no-untyped-def]
        parsed.append(1)
        return fn()

    approver.decide_all(api, counting, "server-1")  # type: ignore[arg-type]
    assert len(parsed) == approver.MAX_PENDING
    denied = [n for n, v in api.verdicts.items() if "more than" in v[1]]
    assert denied == [f"s{i}" for i in range(approver.MAX_PENDING, approver.MAX_PENDING + 3)], api.verdicts


def test_token_create_hands_out_a_token_once_cluster_info_is_signed_for_it(monkeypatch) -> None:
    """A worker's discovery refuses a token cluster-info is not signed for: `k4s token create`
    returns once the controller-manager's bootstrapsigner has signed it, or says it has not."""
    from k4s.host import tokens

    class FakeClient:
        def __init__(self, signed_after: int) -> None:
            self.gets, self.signed_after = 0, signed_after

        def json(self, method: str, path: str) -> dict:
            assert (method, path) == ("GET", tokens.CLUSTER_INFO_PATH)
            self.gets += 1
            return {"data": {"kubeconfig": "...", **({"jws-kubeconfig-abcdef": "sig"}
                                                     if self.gets > self.signed_after else {})}}

    monkeypatch.setattr(tokens.time, "sleep", lambda s: None)
    client = FakeClient(signed_after=3)
    assert tokens.wait_signed(client, "abcdef", 60) and client.gets == 4
    assert not tokens.wait_signed(FakeClient(signed_after=10**9), "abcdef", 0)


# --- etcd membership for a server that joins --------------------------------------------------

def test_a_joining_member_s_initial_cluster_names_every_member_it_must_match() -> None:
    from k4s.cluster.etcdmembers import Member, initial_cluster

    listed = [Member("1", "server-1", ("https://10.77.0.11:2380",), ("https://10.77.0.11:2379",), False),
              Member("2", "", ("https://10.77.0.12:2380",), (), True),  # the one being added: no name yet
              Member("3", "", ("https://10.77.0.13:2380",), (), True)]  # another, added and not started
    assert initial_cluster(listed, "server-2", "https://10.77.0.12:2380") == (
        "server-1=https://10.77.0.11:2380,server-2=https://10.77.0.12:2380,unstarted-3=https://10.77.0.13:2380")


@pytest.mark.parametrize("voting, gone, line", [
    (["s1"], [], None),
    (["s1", "s2", "s3"], ["s3"], None),  # two of three: a majority, writes go on
    (["s1", "s2"], ["s2"], "1 of 2 members unreachable (s2): writes refused until one returns"),
    (["s1", "s2", "s3"], ["s2", "s3"], "2 of 3 members unreachable (s2, s3): writes refused until one returns"),
    (["a", "b", "c", "d", "e"], ["b", "c", "d", "e"], "4 of 5 members unreachable (b, c, d, e): writes refused "
                                                      "until 2 of them return"),
])
def test_the_quorum_line_says_how_many_must_return(voting: list[str], gone: list[str], line: str | None) -> None:
    from k4s.cluster.etcdmembers import quorum_line

    assert quorum_line(voting, gone) == (None if line is None else "k4s: etcd: " + line)


def test_a_lost_quorum_is_said_once_and_its_return_once(monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    """The etcd probe's view: members as this member knows them (answered without a quorum), each
    asked for its status; a member that does not answer counts as gone."""
    from k4s.cluster import etcdmembers

    up = {"https://10.77.0.11:2379"}
    listed = {"members": [{"ID": 1, "name": "server-1", "clientURLs": ["https://10.77.0.11:2379"]},
                          {"ID": 2, "name": "server-2", "clientURLs": ["https://10.77.0.12:2379"]},
                          {"ID": 3, "name": "server-3", "clientURLs": ["https://10.77.0.13:2379"], "isLearner": True}]}

    def call(endpoint: str, path: str, body: dict, ctx: object, timeout: float = 10.0) -> dict:
        if path == "cluster/member/list":
            assert body == {"linearizable": False}
            return listed
        if endpoint not in up:
            raise OSError("timed out")
        return {}

    monkeypatch.setattr(etcdmembers, "call", call)
    q = etcdmembers.Quorum()
    q.observe("https://127.0.0.1:2379", None, healthy=False)  # type: ignore[arg-type]
    assert not q.lost  # starting: nothing asked, nothing said
    q.observe("https://127.0.0.1:2379", None, healthy=True)  # type: ignore[arg-type]
    for _ in range(3):
        q.observe("https://127.0.0.1:2379", None, healthy=False)  # type: ignore[arg-type]
    up.add("https://10.77.0.12:2379")
    q.observe("https://127.0.0.1:2379", None, healthy=True)  # type: ignore[arg-type]
    said = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("k4s: etcd: ")]
    assert said == ["k4s: etcd: 1 of 2 members unreachable (server-2): writes refused until one returns",
                    "k4s: etcd: a majority of members answers again: writes accepted"]


@pytest.mark.parametrize("size, used, defragments", [(40 << 20, 10 << 20, True), (40 << 20, 30 << 20, False),
                                                     (1 << 20, 0, False)])
def test_a_member_defragments_only_when_its_file_holds_enough_for_nothing(monkeypatch: pytest.MonkeyPatch,
                                                                          size: int, used: int,
                                                                          defragments: bool) -> None:
    from k4s.cluster import etcdmembers

    asked: list[str] = []

    def call(endpoint: str, path: str, body: dict, ctx: object, timeout: float = 10.0) -> dict:
        asked.append(path)
        after = "maintenance/defragment" in asked
        return {"dbSize": str(used if after else size), "dbSizeInUse": str(used)}  # the gateway's int64s: strings

    monkeypatch.setattr(etcdmembers, "call", call)
    got = etcdmembers.defragment_if_worth("https://127.0.0.1:2379", None)  # type: ignore[arg-type]
    assert got == ((size, used) if defragments else None)
    assert ("maintenance/defragment" in asked) == defragments
