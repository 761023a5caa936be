"""kubeadm's certificate-key protocol: what a joining server can open, and what it cannot."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from k4s.cluster import certs, copycerts, pki
from k4s.cluster.certs import Identity

OWNER = {"apiVersion": "v1", "kind": "Secret", "name": "bootstrap-token-abcdef", "uid": "u-1"}


@pytest.fixture
def server_pki(tmp_path: Path) -> certs.Files:
    store = pki.PKI(tmp_path / "pki", tmp_path / "kubeconfig", 90, "https://127.0.0.1:6443")
    store.ensure(Identity("server-1", "10.77.0.11", "10.43.0.1", "cluster.local"))
    files = store.files
    files.encryption_config.write_text("kind: EncryptionConfiguration\n")
    return files


def test_a_sealed_file_is_kubeadm_s_layout_nonce_first() -> None:
    key = copycerts.new_key()
    assert len(key) == 64 and int(key, 16) >= 0
    blob = copycerts.seal(b"ca key", key)
    # what kubeadm's cryptoutil.DecryptBytes does: the first 12 bytes are the GCM nonce
    assert AESGCM(bytes.fromhex(key)).decrypt(blob[:12], blob[12:], None) == b"ca key"
    assert copycerts.seal(b"ca key", key) != blob  # a new nonce each time


def test_the_joining_server_gets_every_shared_file_back(server_pki: certs.Files, tmp_path: Path) -> None:
    key = copycerts.new_key()
    secret = copycerts.sealed_secret(server_pki, key, OWNER)
    assert secret["metadata"]["name"] == "kubeadm-certs-abcdef" and secret["metadata"]["ownerReferences"] == [OWNER]
    assert {"ca.crt", "ca.key", "etcd-ca.key", "front-proxy-ca.key", "sa.key", "sa.pub",
            "kubelet-serving-ca.key", "encryption-config.yaml"} <= set(secret["data"])
    assert b"PRIVATE KEY" not in b"".join(base64.b64decode(v) for v in secret["data"].values())
    joiner = certs.Files(tmp_path / "joiner" / "pki", tmp_path / "joiner" / "kubeconfig")
    copycerts.write(joiner, copycerts.opened(secret, key))
    for name, path, _ in copycerts.shared(server_pki):
        if path.exists():
            theirs = dict((n, p) for n, p, _ in copycerts.shared(joiner))[name]
            assert theirs.read_bytes() == path.read_bytes(), name
            assert theirs.stat().st_mode & 0o777 == (0o644 if name.endswith((".crt", ".pub")) else 0o600), name
    # the joiner's own leaves come from the shared CAs: the cluster keeps one identity
    store = pki.PKI(joiner.pki, joiner.kubeconfigs, 90, "https://127.0.0.1:6443")
    results = {r.name: r.action for r in store.ensure(Identity("server-2", "10.77.0.12", "10.43.0.1", "cluster.local"))}
    assert results["ca"] == "kept" and results["etcd/ca"] == "kept" and results["apiserver"] == "created"


def test_a_wrong_key_or_an_altered_byte_opens_nothing(server_pki: certs.Files) -> None:
    key = copycerts.new_key()
    secret = copycerts.sealed_secret(server_pki, key, OWNER)
    with pytest.raises(copycerts.WrongKey, match="does not open kubeadm-certs-abcdef"):
        copycerts.opened(secret, copycerts.new_key())
    blob = bytearray(base64.b64decode(secret["data"]["ca.key"]))
    blob[-1] ^= 1
    altered = {**secret, "data": {**secret["data"], "ca.key": base64.b64encode(bytes(blob)).decode()}}
    with pytest.raises(copycerts.WrongKey):
        copycerts.opened(altered, key)
    for junk in ("", "not base64!", base64.b64encode(b"short").decode()):
        with pytest.raises(copycerts.WrongKey):
            copycerts.opened({**secret, "data": {**secret["data"], "sa.key": junk}}, key)


def test_a_secret_without_a_required_file_is_refused(server_pki: certs.Files) -> None:
    key = copycerts.new_key()
    secret = copycerts.sealed_secret(server_pki, key, OWNER)
    del secret["data"]["etcd-ca.key"]
    with pytest.raises(copycerts.K4sError, match="holds no etcd-ca.key"):
        copycerts.opened(secret, key)


def test_only_the_join_s_own_token_may_read_its_sealed_keys() -> None:
    role, binding = copycerts.reader(OWNER)
    assert role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["kubeadm-certs-abcdef"],
                              "verbs": ["get"]}]
    assert binding["subjects"] == [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User",
                                    "name": "system:bootstrap:abcdef"}]
    assert role["metadata"]["ownerReferences"] == binding["metadata"]["ownerReferences"] == [OWNER]


def token_secret(groups: str = "system:bootstrappers:k4s:control-plane", expires: str = "2999-01-01T00:00:00Z",
                 kind: str = "bootstrap.kubernetes.io/token") -> dict:
    data = {"auth-extra-groups": groups, "expiration": expires}
    return {"type": kind, "metadata": {"name": "bootstrap-token-abcdef", "uid": "u-1"},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def test_the_key_is_never_in_the_cluster_in_the_clear(server_pki: certs.Files) -> None:
    """The request holds a public key; the answer holds the key sealed to it (HPKE), which only the
    operator's one-time private key opens, for this token alone."""
    private, public = copycerts.new_request_key()
    request = copycerts.request(token_secret(), public)
    assert set(request["data"]) == {"public-key"} and request["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    made = copycerts.answer(server_pki, token_secret(), public)
    answered = {**request, "data": {**request["data"], "wrapped-key": made["wrapped"]}}
    key = copycerts.unwrap_key(answered, private, "abcdef")
    assert key is not None and key not in json.dumps(answered) and key not in json.dumps(made["sealed"])
    assert copycerts.opened(made["sealed"], key)["ca.key"] == server_pki.key(certs.CLUSTER_CA).read_bytes()
    other, _ = copycerts.new_request_key()
    with pytest.raises(copycerts.K4sError, match="does not open with this request's key"):
        copycerts.unwrap_key(answered, other, "abcdef")
    with pytest.raises(copycerts.K4sError, match="does not open"):
        copycerts.unwrap_key(answered, private, "zzzzzz")  # the key was sealed for another token
    assert copycerts.unwrap_key(request, private, "abcdef") is None  # not answered yet


@pytest.mark.parametrize("token, public, why", [
    (None, b"k" * 32, "its token is gone"),
    (token_secret(kind="Opaque"), b"k" * 32, "not a bootstrap token"),
    (token_secret(groups="system:bootstrappers:k4s:worker"), b"k" * 32, "not a control-plane token"),
    (token_secret(expires="2000-01-01T00:00:00Z"), b"k" * 32, "expired"),
    (token_secret(), b"short", "not an X25519 key"),
    (token_secret(), b"k" * 32, None),
])
def test_a_server_answers_only_a_live_control_plane_token_s_request(token, public: bytes, why) -> None:  # type: ignore[no-untyped-def]
    got = copycerts.refusal(token, public, now=1.9e9)
    assert (got is None) if why is None else (why in got), got


class FakeCluster:
    """kube-system's Secrets, Roles and RoleBindings as a server's approver round sees them."""

    def __init__(self, objects: dict[str, dict]) -> None:
        self.objects, self.deleted = objects, []

    def get_or_none(self, path: str) -> dict | None:
        return self.objects.get(path.rsplit("/", 1)[1])

    # the real client's 404 handling, over json below
    delete_or_none = copycerts.kubeapi.Client.delete_or_none
    or_none = copycerts.kubeapi.Client.or_none

    def json(self, method: str, path: str, obj: dict | None = None) -> dict:
        if method == "GET" and "fieldSelector=type" in path:
            return {"items": [o for o in self.objects.values() if o.get("type") == copycerts.REQUEST_TYPE]}
        name = path.rsplit("/", 1)[1]
        if method == "DELETE":
            self.deleted.append(name)
            return self.objects.pop(name)
        if method == "PUT":
            self.objects[name] = obj  # type: ignore[assignment]
            return obj  # type: ignore[return-value]
        raise AssertionError((method, path))

    def apply(self, obj: dict) -> dict:
        self.objects[obj["metadata"]["name"]] = obj
        return obj


def test_a_round_answers_good_requests_and_drops_the_rest(server_pki: certs.Files) -> None:
    private, public = copycerts.new_request_key()
    good = token_secret()
    worker = {**token_secret(groups="system:bootstrappers:k4s:worker"),
              "metadata": {"name": "bootstrap-token-wwwwww", "uid": "u-2"}}
    stray = copycerts.request(worker, public)
    cluster = FakeCluster({"bootstrap-token-abcdef": good, "bootstrap-token-wwwwww": worker,
                           "k4s-upload-certs-abcdef": copycerts.request(good, public), "k4s-upload-certs-wwwwww": stray})
    assert copycerts.serve_requests(cluster, server_pki, lambda fn, _t: fn()) == 1  # type: ignore[arg-type]
    assert cluster.deleted == ["k4s-upload-certs-wwwwww"]  # a worker's token gets no CA keys
    key = copycerts.unwrap_key(cluster.objects["k4s-upload-certs-abcdef"], private, "abcdef")
    assert key and copycerts.opened(cluster.objects["kubeadm-certs-abcdef"], key)["etcd-ca.key"]
    assert cluster.objects["k4s:kubeadm-certs-abcdef"]["kind"] in ("Role", "RoleBinding")
    # answered once: a second round leaves it to the operator's host, and never seals again
    assert copycerts.serve_requests(cluster, server_pki, lambda fn, _t: fn()) == 0  # type: ignore[arg-type]
    del cluster.objects["k4s-upload-certs-abcdef"]["data"]["wrapped-key"]
    assert copycerts.serve_requests(cluster, server_pki, lambda fn, _t: fn()) == 0  # type: ignore[arg-type]
    assert "k4s-upload-certs-abcdef" in cluster.deleted
