"""`k4s server --control-plane-only`: real etcd, apiserver, controller-manager, scheduler."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import time

import pytest

from tests.conftest import k4s_cmd
from tests.integration.conftest import BIN, Server


def test_readyz_and_deployment_gets_replicaset_and_pending_pods(server: Server) -> None:
    assert server.kubectl("get", "--raw", "/readyz").stdout.strip() == "ok"
    server.kubectl("create", "deployment", "web", "--image=k4s.local/busybox:1.36", "--replicas=2",
                   "--", "sleep", "3600")
    end = time.monotonic() + 60
    while time.monotonic() < end:
        rs = server.kubectl("get", "rs", "-l", "app=web", "-o", "jsonpath={.items[*].metadata.name}").stdout
        phases = server.kubectl("get", "pods", "-l", "app=web", "-o", "jsonpath={.items[*].status.phase}").stdout
        if rs.startswith("web-") and phases.split() == ["Pending", "Pending"]:
            return
        time.sleep(1)
    raise AssertionError(f"no ReplicaSet with two pending pods: rs={rs!r} phases={phases!r}")


@pytest.mark.parametrize("as_args,verb_args,expected", [
    (["--as=system:node:k4s-test", "--as-group=system:nodes"], ["get", "nodes/k4s-test"], "yes"),
    (["--as=system:node:k4s-test", "--as-group=system:nodes"], ["list", "secrets", "-A"], "no"),
    (["--as=system:node:k4s-test", "--as-group=system:nodes"], ["delete", "namespaces"], "no"),
    (["--as=system:serviceaccount:default:default"], ["list", "pods"], "no"),
    (["--as=system:serviceaccount:default:default"], ["create", "deployments"], "no"),
    (["--as=kube-apiserver-kubelet-client"], ["get", "nodes/k4s-test/proxy"], "yes"),
    ([], ["*", "*"], "yes"),  # the admin
])
def test_rbac_answers(server: Server, as_args, verb_args, expected) -> None:
    r = server.kubectl("auth", "can-i", *verb_args, *as_args, check=False)
    assert r.stdout.strip().split()[0] == expected, (r.stdout, r.stderr)


def test_anonymous_request_refused(server: Server) -> None:
    ctx = ssl.create_default_context(cafile=str(server.data / "pki" / "ca.crt"))
    with socket.create_connection(("127.0.0.1", 6443), timeout=5) as s, \
            ctx.wrap_socket(s, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /api/v1/namespaces HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        reply = tls.recv(200).decode()
    assert reply.startswith("HTTP/1.1 401"), reply


def test_secrets_are_encrypted_at_rest(server: Server) -> None:
    server.kubectl("create", "secret", "generic", "s1", "--from-literal=password=hunter2-plaintext")
    pki = server.data / "pki"
    import subprocess
    r = subprocess.run([str(BIN / "etcdctl"), "--endpoints=https://127.0.0.1:2379", f"--cacert={pki}/etcd/ca.crt",
                        f"--cert={pki}/apiserver-etcd-client.crt", f"--key={pki}/apiserver-etcd-client.key",
                        "get", "/registry/secrets/default/s1"], capture_output=True, timeout=30)
    assert r.returncode == 0 and b"k8s:enc:secretbox:v1:k4s-1:" in r.stdout
    assert b"hunter2-plaintext" not in r.stdout


def _component_pid(server: Server, name: str) -> int:
    return server.status()["components"][name]["pid"]


@pytest.mark.parametrize("victim", ["kube-apiserver", "etcd"])
def test_kill_9_is_restarted_and_state_survives(server: Server, victim: str) -> None:
    server.kubectl("create", "deployment", f"keep-{victim}", "--image=k4s.local/busybox:1.36")
    before = server.status()["components"][victim]
    os.kill(before["pid"], signal.SIGKILL)
    end = time.monotonic() + 120
    while time.monotonic() < end:
        now = server.status()["components"][victim]
        if now["restarts"] > before["restarts"] and now["ready"]:
            break
        time.sleep(0.5)
    else:
        raise AssertionError(f"{victim} not restarted: {server.status()}")
    server.wait_ready(120)
    if victim == "kube-apiserver":  # the components in its process came back with it
        comps = server.status()["components"]
        assert comps["kube-scheduler"]["pid"] == comps["kube-controller-manager"]["pid"] == now["pid"]
        assert comps["kube-scheduler"]["restarts"] > 0
    end = time.monotonic() + 60
    while server.kubectl("get", "--raw", "/readyz", check=False).stdout.strip() != "ok":
        assert time.monotonic() < end, "apiserver /readyz not ok after restart"
        time.sleep(1)
    assert server.kubectl("get", "deployment", f"keep-{victim}", "-o", "name").stdout.strip() == \
        f"deployment.apps/keep-{victim}"


def test_status_applet_reports_every_component(server: Server) -> None:
    r = k4s_cmd("status", "--config", os.devnull, "--set", f"data-dir={server.data}", "--set", f"run-dir={server.run}")
    assert r.returncode == 0, r.stdout
    for name in ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"):
        line = next(ln for ln in r.stdout.splitlines() if ln.startswith(name + " "))
        assert " ready " in line and " yes " in line


def _get(port: int, path: str, ctx: ssl.SSLContext) -> int:
    import http.client

    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request("GET", path)
        return conn.getresponse().status
    finally:
        conn.close()


def test_anonymous_requests_reach_cluster_info_and_nothing_else(server: Server) -> None:
    import base64

    import yaml

    from k4s.cluster import pki

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    for path in ("/api", "/readyz", "/api/v1/namespaces/kube-system/configmaps",
                 "/api/v1/namespaces/kube-public/configmaps"):
        assert _get(6443, path, ctx) == 401, path
    end = time.monotonic() + 60
    while _get(6443, "/api/v1/namespaces/kube-public/configmaps/cluster-info", ctx) != 200:
        assert time.monotonic() < end, "cluster-info is not published"
        time.sleep(1)
    # the CA in it is the node's: the pin the console prints matches it
    info = yaml.safe_load(server.kubectl("get", "-n", "kube-public", "configmap", "cluster-info",
                                         "-o", "jsonpath={.data.kubeconfig}").stdout)
    ca = base64.b64decode(info["clusters"][0]["cluster"]["certificate-authority-data"])
    assert ca == (server.data / "pki" / "ca.crt").read_bytes()
    assert f"k4s: cluster CA {pki.spki_hash_pem(ca)}" in server.log.read_text()


def test_a_client_certificate_from_another_ca_is_refused(server: Server, tmp_path) -> None:
    from k4s.cluster import pki

    key, ca = pki.issue_ca(pki.CA("evil", "evil-ca"))
    leaf = pki.Leaf("x", pki.CA("evil", "evil-ca"), "kubernetes-admin", ("system:masters",))
    lkey, lcert = pki.issue_leaf(leaf, key, ca)
    (tmp_path / "c.crt").write_bytes(pki.cert_pem(lcert))
    (tmp_path / "c.key").write_bytes(pki.key_pem(lkey))
    ctx = ssl.create_default_context(cafile=str(server.data / "pki" / "ca.crt"))
    ctx.load_cert_chain(tmp_path / "c.crt", tmp_path / "c.key")
    assert _get(6443, "/api", ctx) == 401
