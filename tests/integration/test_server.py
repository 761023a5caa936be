"""`k4s server --control-plane-only`: real etcd, apiserver, controller-manager, scheduler."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
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


def test_a_server_join_is_refused_while_the_controllers_elect_no_leader(server: Server) -> None:
    """This server was not booted with cluster-init: its controllers run without a lease, so a
    second server's would run beside them. The operator is told so, and no token is left."""
    before = server.kubectl("get", "secrets", "-n", "kube-system", "-o", "name").stdout
    r = k4s_cmd("token", "create", "--control-plane", "--node", "server-2", "--kubeconfig", str(server.kubeconfig))
    errors = [ln for ln in r.stderr.splitlines() if ln.startswith("k4s token: error:")]
    assert r.returncode == 1 and len(errors) == 1, r.stdout + r.stderr
    assert "controller-manager elects no leader" in errors[0] and "k4s.cluster-init=1" in errors[0], errors
    # its token deleted at once, and what the token owns (its upload request) after it
    end = time.monotonic() + 60
    while (now := server.kubectl("get", "secrets", "-n", "kube-system", "-o", "name").stdout) != before:
        assert time.monotonic() < end, f"left behind: {set(now.split()) - set(before.split())}"
        time.sleep(1)


def test_a_worker_s_load_balancer_passes_tls_through_to_an_apiserver_that_answers(server: Server, tmp_path) -> None:
    """k4s.cluster.apilb in front of a dead server and this real one: kubectl, through it, checks
    the apiserver's own certificate (TLS is not ended on the way) and its requests get there."""
    from k4s.cluster import apilb

    dead = socket.socket()  # bound, not listening: a server that is gone
    dead.bind(("127.0.0.1", 0))
    lb = apilb.Balancer(dead.getsockname()[:2], port=0)
    lb.update([("127.0.0.1", 6443)])
    lb.current = lb.fallback  # the joined server first, as after a worker's boot: it refuses
    lb.start()
    try:
        kc = tmp_path / "via-lb.kubeconfig"
        kc.write_text(server.kubeconfig.read_text().replace("https://127.0.0.1:6443",
                                                            f"https://127.0.0.1:{lb.address[1]}"))
        r = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(kc), "create", "configmap", "via-lb",
                            "--from-literal=n=1"], capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        assert server.kubectl("get", "configmap", "via-lb", "-o", "jsonpath={.data.n}").stdout == "1"
        assert lb.current == ("127.0.0.1", 6443)
    finally:
        lb.stop()
        dead.close()


def test_etcd_gives_back_what_deleted_objects_held(server: Server) -> None:
    """On a RAM-only server etcd's database file is RAM: after objects are deleted and their
    revisions compacted (the apiserver does it every 5 minutes; here at once), the scheduled
    defragmentation gives the space back."""
    import base64
    import json as _json

    from k4s.cluster import certs, etcdmembers, kubeapi
    from k4s.cluster.components import etcd
    from k4s.layout import Paths

    paths = Paths.of(server.data, server.run)
    files = certs.Files(paths.pki, paths.kubeconfigs)
    admin = kubeapi.Client.from_files(files, 6443)
    blob = base64.b64encode(os.urandom(600 * 1024)).decode()  # 800 KB a ConfigMap, 24 MB in all
    for i in range(30):
        admin.json("POST", "/api/v1/namespaces/default/configmaps",
                   {"metadata": {"name": f"bulk-{i}"}, "data": {"blob": blob}})
    for i in range(30):
        admin.json("DELETE", f"/api/v1/namespaces/default/configmaps/bulk-{i}")
    ctx = kubeapi.tls_context(files.crt(certs.ETCD_CA), files.crt(certs.APISERVER_ETCD_CLIENT),
                              files.key(certs.APISERVER_ETCD_CLIENT))
    rev = int(etcdmembers.call(etcd.CLIENT_URL, "kv/range", {"key": base64.b64encode(b"/").decode()},
                               ctx)["header"]["revision"])
    etcdmembers.call(etcd.CLIENT_URL, "kv/compaction", {"revision": rev, "physical": True}, ctx, timeout=60)
    # the freed pages count once etcd's backend has committed them (its batch, every 100 ms; longer
    # on a busy machine: a CI run once saw 10 of the 24 MB free right after the compaction)
    end = time.monotonic() + 30
    while (got := etcdmembers.defragment_if_worth(etcd.CLIENT_URL, ctx)) is None and time.monotonic() < end:
        time.sleep(1)
    assert got is not None, _json.dumps(etcdmembers.call(etcd.CLIENT_URL, "maintenance/status", {}, ctx))
    before, after = got
    assert before - after >= etcdmembers.DEFRAG_MIN_FREE, got


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


# --- k4s's metrics endpoint, and renewal while running ---------------------------------------

METRICS = 10270


def _leaf_files(server: Server, tmp_path, cn: str, orgs: tuple[str, ...] = (), ca: tuple | None = None) -> tuple:
    """A client certificate and key for cn, from the cluster CA (or the given (key, cert, CA))."""
    from k4s.cluster import pki

    if ca is None:
        store = pki.PKI(server.data / "pki", server.data / "kubeconfig")
        ca_key, ca_cert = store.load_ca(pki.CLUSTER_CA)
        ca = (ca_key, ca_cert, pki.CLUSTER_CA)
    key, cert = pki.issue_leaf(pki.Leaf(cn, ca[2], cn, orgs), ca[0], ca[1])
    crt, k = tmp_path / f"{cn}.crt", tmp_path / f"{cn}.key"
    crt.write_bytes(pki.cert_pem(cert))
    k.write_bytes(pki.key_pem(key))
    return crt, k


def _scrape(server: Server, path: str = "/metrics", cert: tuple | None = None,
            token: str = "") -> tuple[int, str]:
    import http.client

    # the node's serving certificate (the kubelet's) is the kubelet-serving CA's, not the cluster CA's
    ctx = ssl.create_default_context(cafile=str(server.data / "pki" / "kubelet-serving-ca.crt"))
    if cert:
        ctx.load_cert_chain(*map(str, cert))
    conn = http.client.HTTPSConnection("127.0.0.1", METRICS, context=ctx, timeout=30)
    try:
        conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
        r = conn.getresponse()
        return r.status, r.read().decode()
    finally:
        conn.close()


def _metrics_up(server: Server) -> None:
    end = time.monotonic() + 60
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", METRICS)) == 0:
                return
        assert time.monotonic() < end, f"nothing listens on {METRICS}: {server.log.read_text()[-2000:]}"
        time.sleep(1)


def test_metrics_answer_authorized_clients_with_components_memory_and_certificates(server: Server) -> None:
    _metrics_up(server)
    pki_dir = server.data / "pki"
    status, body = _scrape(server, cert=(pki_dir / "admin.crt", pki_dir / "admin.key"))
    assert status == 200, body
    for series in ('k4s_component_up{component="kube-apiserver"} 1.0',
                   'k4s_component_restarts_total{component="etcd"}',
                   'k4s_boot_component_ready_seconds{component="kube-scheduler"}',
                   'k4s_memory_bytes{kind="available"}', 'k4s_memory_bytes{kind="anon"}',
                   'k4s_certificate_expiry_timestamp_seconds{ca="true",certificate="ca"}',
                   'k4s_certificate_expiry_timestamp_seconds{ca="false",certificate="apiserver"}'):
        assert series in body, series
    # `k4s status` shows the same data, read the same way
    r = k4s_cmd("status", "--config", os.devnull, "--set", f"data-dir={server.data}", "--set", f"run-dir={server.run}")
    assert "memory:" in r.stdout and "ca (CA)" in r.stdout and "renewed while running: " in r.stdout


def test_metrics_refuse_anonymous_unauthorized_and_foreign_clients(server: Server, tmp_path) -> None:
    from k4s.cluster import pki

    _metrics_up(server)
    status, body = _scrape(server)
    assert status == 401 and "client certificate or a bearer token" in body
    assert _scrape(server, token="not-a-token")[0] == 401
    status, body = _scrape(server, cert=_leaf_files(server, tmp_path, "nobody"))
    assert status == 403 and "nobody may not get /metrics" in body
    evil = pki.CA("evil", "evil-ca")
    evil_key, evil_cert = pki.issue_ca(evil)
    with pytest.raises((ssl.SSLError, ConnectionError)):
        _scrape(server, cert=_leaf_files(server, tmp_path, "intruder", ("system:masters",), (evil_key, evil_cert, evil)))


def test_a_service_account_with_the_monitoring_role_scrapes_with_its_token(server: Server) -> None:
    """How an in-cluster Prometheus scrapes: its token, checked by TokenReview, allowed by RBAC.
    A service account without the role is authenticated and refused."""
    _metrics_up(server)
    for sa in ("prometheus", "stranger"):
        server.kubectl("create", "serviceaccount", sa)
    stranger = server.kubectl("create", "token", "stranger").stdout.strip()
    assert _scrape(server, token=stranger)[0] == 403  # authenticated, not allowed
    server.kubectl("create", "clusterrolebinding", "prometheus-monitoring", "--clusterrole=system:monitoring",
                   "--serviceaccount=default:prometheus")
    # the grant is in the apiserver's authorizer before the first scrape: the node caches a refusal for
    # 30 s (metrics.DENIED_CACHE), a grant as long as it holds
    end = time.monotonic() + 60
    while server.kubectl("auth", "can-i", "get", "/metrics", "--as=system:serviceaccount:default:prometheus",
                         check=False).stdout.strip() != "yes":
        assert time.monotonic() < end, "the binding never reached the authorizer"
        time.sleep(0.5)
    status = _scrape(server, token=server.kubectl("create", "token", "prometheus").stdout.strip())
    assert status[0] == 200 and "k4s_component_up" in status[1], status[0]


def _serving_serial(port: int) -> int:
    from cryptography import x509

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, ctx.wrap_socket(raw) as s:
        return x509.load_der_x509_certificate(s.getpeercert(binary_form=True)).serial_number


def test_leaves_near_expiry_are_renewed_while_kubectl_keeps_working(server: Server) -> None:
    """Leaves 5 days from expiry (inside the 90-day window) are re-issued on SIGHUP (the periodic
    check's trigger); the apiserver serves the new one without a restart; kubectl never fails."""
    import threading

    from k4s.cluster import certs, pki

    store = pki.PKI(server.data / "pki", server.data / "kubeconfig")
    ident = certs.Identity("k4s-test", "127.0.0.1", "10.43.0.1", "cluster.local", ())
    ca_key, ca_cert = store.load_ca(pki.CLUSTER_CA)
    defs = {leaf.name: leaf for leaf in certs.leaves(ident)}
    for name in (certs.APISERVER, certs.CONTROLLER_MANAGER):
        store.write(name, *pki.issue_leaf(defs[name], ca_key, ca_cert, days=5))
    apiserver_pid = server.status()["components"]["kube-apiserver"]["pid"]
    failures: list[str] = []
    stop = threading.Event()

    def keep_asking() -> None:
        while not stop.is_set():
            r = server.kubectl("get", "namespaces", check=False)
            if r.returncode != 0:
                failures.append(r.stderr)
            stop.wait(1)

    t = threading.Thread(target=keep_asking)
    t.start()
    try:
        os.kill(server.proc.pid, signal.SIGHUP)
        end = time.monotonic() + 60
        while "cert=controller-manager" not in server.log.read_text() or "event=renewed" not in server.log.read_text():
            assert time.monotonic() < end, server.log.read_text()[-2000:]
            time.sleep(1)
        renewed = store.read_cert(certs.APISERVER)
        assert renewed is not None and (renewed.not_valid_after_utc - pki._now()).days > 300
        end = time.monotonic() + 120  # the apiserver's certificate controller re-reads its files
        while _serving_serial(6443) != renewed.serial_number:
            assert time.monotonic() < end, "the apiserver still serves the old certificate"
            time.sleep(2)
    finally:
        stop.set()
        t.join()
    assert not failures, failures[:3]
    assert server.status()["components"]["kube-apiserver"]["pid"] == apiserver_pid  # reloaded, not restarted
    status, body = _scrape(server, cert=(server.data / "pki" / "admin.crt", server.data / "pki" / "admin.key"))
    assert status == 200 and "k4s_certificate_renewals_total 2.0" in body
