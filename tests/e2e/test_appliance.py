"""Boot -> node Ready -> CoreDNS -> workloads, DNS, a Service -> clean poweroff, in QEMU."""

from __future__ import annotations

import base64
import json
import re
import subprocess

from k4s import events, log
from k4s.cluster import protect
from k4s.cluster.components import kubelet
from k4s.host.vm import VM
from tests.conftest import ROOT, k4s_cmd
from tests.e2e.conftest import KUBECTL, Cluster, assert_node_ready, free_port

LOCK = {c["name"]: c for c in json.loads((ROOT / "build" / "components" / "lock.json").read_text())["components"]}
KUBERNETES = LOCK["kube"]["version"]
CONTAINERD = LOCK["containerd"]["version"]


def test_node_is_ready(cluster: Cluster) -> None:
    r = cluster.kubectl("get", "nodes", "-o", "json")
    [node] = json.loads(r.stdout)["items"]
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == KUBERNETES
    assert node["status"]["nodeInfo"]["kubeProxyVersion"] in ("", KUBERNETES)  # deprecated: often empty
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"] == f"containerd://{CONTAINERD.lstrip('v')}"
    server = json.loads(cluster.kubectl("version", "-o", "json").stdout)["serverVersion"]
    assert server["gitVersion"] == KUBERNETES


DEPRECATION = re.compile(r"deprecat|has been removed|will be removed|is no longer (supported|used)", re.I)


def test_no_component_warns_of_a_deprecated_flag_or_field(cluster: Cluster) -> None:
    """Every flag, feature gate and config field k4s gives a component is current upstream:
    no component's log from this boot says otherwise."""
    node = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout
    logs = f"/api/v1/nodes/{node}/proxy/logs/k4s/"
    names = sorted(set(re.findall(r'href="([\w.-]+\.log)"', cluster.kubectl("get", "--raw", logs).stdout)))
    assert {"kubelet.log", "containerd.log", "flannel.log", "k4s.log"} <= set(names), names
    found = {name: [ln for ln in cluster.kubectl("get", "--raw", logs + name).stdout.splitlines()
                    if DEPRECATION.search(ln)] for name in names}
    assert not {n: lines for n, lines in found.items() if lines}, found


def test_the_kubelet_s_process_finds_no_iptables_on_an_nftables_node(cluster: Cluster) -> None:
    """kube-proxy's rules are nftables; in the kubelet's process (which hosts kube-proxy) iptables
    is missing, so the kubelet makes no iptables chains and kube-proxy cleans up no iptables
    leftovers (k4s.cluster.components.kubelet.WITHOUT_IPTABLES). Services still answer: CoreDNS
    reaches the apiserver through its ClusterIP (test_coredns_becomes_ready)."""
    node = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout
    log = cluster.kubectl("get", "--raw", f"/api/v1/nodes/{node}/proxy/logs/k4s/kubelet.log").stdout
    assert "No iptables support on this system" in log, log[-2000:]
    assert "Initialized iptables rules" not in log


def test_crictl_lists_the_node_s_containers_and_images(cluster: Cluster) -> None:
    """crictl on the node (the README's recipe): a sysadmin debug pod, chroot into the node's
    root, where `crictl` is k4s's applet that points the upstream crictl at containerd."""
    test_coredns_becomes_ready(cluster)
    node = cluster.kubectl("get", "nodes", "-o", "jsonpath={.items[0].metadata.name}").stdout
    r = cluster.kubectl("debug", "-n", "kube-system", f"node/{node}", "--profile=sysadmin",
                        "--image=k4s.local/busybox:1.36", "--image-pull-policy=Never", "--",
                        "sh", "-c", "chroot /host crictl ps && echo --- && chroot /host crictl images")
    [pod] = re.findall(r"Creating debugging pod (\S+)", r.stdout + r.stderr)
    phase = cluster.wait_for(f"debug pod {pod}", lambda: (
        (p := cluster.kubectl("-n", "kube-system", "get", "pod", pod, "-o", "jsonpath={.status.phase}",
                              check=False).stdout) in ("Succeeded", "Failed"), p))
    out = cluster.kubectl("-n", "kube-system", "logs", pod).stdout
    assert phase == "Succeeded" and "\n---\n" in out, out
    ps, images = out.split("\n---\n", 1)
    assert re.search(r"^\S+\s+\S+\s+.*\bRunning\b.*\bcoredns\b", ps, re.M), ps
    assert "k4s.local/busybox" in images and "k4s.local/pause" in images, images


def test_coredns_becomes_ready(cluster: Cluster) -> None:
    cluster.wait_available("coredns", "kube-system", timeout=400)


def run_pod(cluster: Cluster, name: str, *command: str, timeout: float = 300) -> str:
    cluster.kubectl("run", name, "--image=k4s.local/busybox:1.36", "--image-pull-policy=Never",
                    "--restart=Never", "--command", "--", *command)
    phase = cluster.wait_finished(name, timeout)
    logs = cluster.kubectl("logs", name).stdout
    assert phase == "Succeeded", f"{name} {phase}: {logs}"
    return logs


def test_busybox_pod_runs_and_logs(cluster: Cluster) -> None:
    logs = run_pod(cluster, "hello", "sh", "-c", "echo hello from a k4s pod; uname -r")
    assert "hello from a k4s pod" in logs.splitlines()


def test_cluster_dns_resolves_from_a_pod(cluster: Cluster) -> None:
    test_coredns_becomes_ready(cluster)
    logs = run_pod(cluster, "dns", "nslookup", "kubernetes.default.svc.cluster.local")
    assert "10.43.0.1" in logs, logs


def test_clusterip_service_reaches_a_pod(cluster: Cluster) -> None:
    cluster.kubectl("create", "deployment", "web", "--image=k4s.local/busybox:1.36", "--port=8080", "--",
                    "sh", "-c", "mkdir -p /www && echo served-by-k4s > /www/index.html && httpd -f -p 8080 -h /www")
    cluster.kubectl("patch", "deployment", "web", "--type=json", "-p",
                    '[{"op":"add","path":"/spec/template/spec/containers/0/imagePullPolicy","value":"Never"}]')
    cluster.kubectl("expose", "deployment", "web", "--port=80", "--target-port=8080")
    cluster.wait_available("web")
    ip = cluster.kubectl("get", "svc", "web", "-o", "jsonpath={.spec.clusterIP}").stdout.strip()
    assert ip.startswith("10.43.")
    # kube-proxy programs the new Service within seconds; the client retries for a minute.
    # (Debian's static busybox wget crashes without the NSS libraries; nc does plain HTTP fine.)
    logs = run_pod(cluster, "client", "sh", "-c",
                   f"for i in $(seq 30); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 5 {ip} 80 "
                   "| grep served-by-k4s && exit 0; sleep 2; done; exit 1")
    assert "served-by-k4s" in logs


def test_manifest_dropped_in_the_image_is_applied(cluster: Cluster) -> None:
    def probe():  # type: ignore[no-untyped-def]
        r = cluster.kubectl("get", "configmap", "k4s-e2e-autodeploy", "-o", "jsonpath={.data.dropped-in}",
                            check=False)
        return r.stdout == "yes", r.stdout + r.stderr
    cluster.wait_for("auto-deploy ConfigMap", probe, timeout=120)
    managed = cluster.kubectl("get", "configmap", "k4s-e2e-autodeploy", "--show-managed-fields", "-o",
                              "jsonpath={.metadata.managedFields[0].manager}").stdout
    assert managed == "k4s"


# --- what a served payload holds, and who gets in ---------------------------------------------

# Key material, not the words: programs hold "PRIVATE KEY" as a PEM type name, but a key is
# a PEM block with its base64 body; an encryption config holds a base64 32-byte secret.
SECRET = re.compile(rb"-----BEGIN [A-Z ]*PRIVATE KEY-----\s*[A-Za-z0-9+/=\s]{40,}-----END"
                    rb"|secret:\s*[A-Za-z0-9+/]{43}=")


def secrets_in(blob: bytes, where: str, tmp) -> list[str]:  # type: ignore[no-untyped-def]
    """Every member of every segment (and of every squashfs part inside) that holds key material."""
    import subprocess

    from k4s.image import cpio

    found = []
    for m in cpio.read(blob, cap=4 << 30):
        if m.name.endswith(".key") or SECRET.search(m.data):
            found.append(f"{where}:{m.name}")
        if m.name.endswith(".squashfs"):
            sq = tmp / m.name.replace("/", "_")
            sq.write_bytes(m.data)
            out = tmp / (sq.name + ".d")
            subprocess.run(["unsquashfs", "-q", "-n", "-d", str(out), str(sq)], check=True, capture_output=True)
            for f in out.rglob("*"):
                if f.is_file() and not f.is_symlink() and (f.suffix == ".key" or SECRET.search(f.read_bytes())):
                    found.append(f"{where}:{m.name}:{f.relative_to(out)}")
    return found


def test_no_private_key_in_the_payload_or_the_seed(cluster: Cluster, tmp_path) -> None:
    """Everything the VM booted from (every initramfs segment, every squashfs part, the seed)
    is public: no key, no encryption config. The node made its keys in RAM."""
    boot = cluster.vm.out / "boot-initrd.img"  # the image followed by the seed, as QEMU was given it
    assert boot.stat().st_size > (cluster.vm.initrd.stat().st_size)
    assert secrets_in(boot.read_bytes(), "boot-initrd.img", tmp_path) == []
    # and the node is up with keys it made itself, pinned by the host
    assert cluster.vm.ca_hash.startswith("sha256:") and len(cluster.vm.ca_hash) == 71
    assert f"k4s: cluster CA {cluster.vm.ca_hash}" in cluster.vm.console.read_text(errors="replace")


def _status(cluster: Cluster, crt, key) -> int:  # type: ignore[no-untyped-def]
    import http.client
    import ssl

    from tests.e2e.conftest import PORT

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(crt, key)
    conn = http.client.HTTPSConnection("127.0.0.1", PORT, context=ctx, timeout=30)
    try:
        conn.request("GET", "/api/v1/namespaces/kube-system/pods")
        return conn.getresponse().status
    finally:
        conn.close()


def test_an_admin_certificate_from_another_ca_is_refused(cluster: Cluster, tmp_path) -> None:
    from k4s.cluster import certs, pki

    key, ca = pki.issue_ca(certs.CA("ca", "not-the-operator"))
    leaf = certs.Leaf("admin", certs.CA("ca", "x"), "kubernetes-admin", ("system:masters", certs.OPERATORS_GROUP))
    lkey, lcert = pki.issue_leaf(leaf, key, ca)
    (tmp_path / "a.crt").write_bytes(pki.cert_pem(lcert))
    (tmp_path / "a.key").write_bytes(pki.key_pem(lkey))
    assert _status(cluster, tmp_path / "a.crt", tmp_path / "a.key") == 401
    op = cluster.vm.operator
    assert _status(cluster, op.admin_crt, op.admin_key) == 200


HOG = """apiVersion: v1
kind: Pod
metadata: {name: hog}
spec:
  restartPolicy: Never
  containers:
  - name: hog
    image: k4s.local/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo swap limit $(cat /sys/fs/cgroup/memory.swap.max); until [ -e /go ]; do sleep 1; done; tail /dev/zero"]
"""
NODE_PROCESSES = ("etcd", "kube-apiserver", "kubelet", "containerd")


VOLUME = """apiVersion: v1
kind: PersistentVolumeClaim
metadata: {name: scratch}
spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 16Mi}}}
---
apiVersion: v1
kind: Pod
metadata: {name: writer}
spec:
  restartPolicy: Never
  containers:
  - name: c
    image: k4s.local/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "echo written-to-a-volume > /data/f && cat /data/f"]
    volumeMounts: [{name: v, mountPath: /data}]
  volumes: [{name: v, persistentVolumeClaim: {claimName: scratch}}]
"""


def test_a_claim_without_a_class_gets_a_local_path_volume_in_ram(cluster: Cluster) -> None:
    """No data disk: the default StorageClass still binds claims, with volumes in RAM under data-dir."""
    subprocess.run([str(KUBECTL), "--kubeconfig", str(cluster.vm.kubeconfig), "apply", "-f", "-"], input=VOLUME,
                   text=True, check=True, capture_output=True, timeout=120)
    phase = cluster.wait_finished("writer", timeout=400)
    assert phase == "Succeeded", cluster.kubectl("get", "pod", "writer", "-o", "jsonpath={.status}").stdout
    assert cluster.kubectl("logs", "writer").stdout.strip() == "written-to-a-volume"
    pvc = json.loads(cluster.kubectl("get", "pvc", "scratch", "-o", "json").stdout)
    assert pvc["spec"]["storageClassName"] == "local-path" and pvc["status"]["phase"] == "Bound"
    pv = json.loads(cluster.kubectl("get", "pv", pvc["spec"]["volumeName"], "-o", "json").stdout)
    assert pv["spec"]["hostPath"]["path"].startswith("/var/lib/k4s/storage/pvc-")


def test_the_operator_reads_metrics_and_status_and_no_one_else_does(cluster: Cluster) -> None:
    """k4s's endpoint on the node, forwarded: the operator's certificate gets the Prometheus series
    and `k4s status --remote`; a client without one gets 401."""
    import http.client
    import ssl

    url = f"https://127.0.0.1:{cluster.vm.metrics_port}"
    r = k4s_cmd("status", "--remote", url, "--kubeconfig", str(cluster.vm.kubeconfig))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("etcd", "kube-apiserver", "kubelet", "flannel"):
        assert any(ln.startswith(name + " ") and " yes " in ln for ln in r.stdout.splitlines()), name
    assert "memory:" in r.stdout and "ca (CA)" in r.stdout and "kubelet-server" in r.stdout

    def get(ctx: ssl.SSLContext) -> tuple[int, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", cluster.vm.metrics_port, context=ctx, timeout=30)
        try:
            conn.request("GET", "/metrics")
            resp = conn.getresponse()
            return resp.status, resp.read().decode()
        finally:
            conn.close()

    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname, anonymous.verify_mode = False, ssl.CERT_NONE
    assert get(anonymous)[0] == 401
    operator = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    operator.check_hostname, operator.verify_mode = False, ssl.CERT_NONE
    operator.load_cert_chain(cluster.vm.operator.admin_crt, cluster.vm.operator.admin_key)
    status, body = get(operator)
    assert status == 200, body
    for series in ('k4s_component_up{component="kubelet"} 1.0', 'k4s_memory_bytes{kind="used"}',
                   'k4s_process_anon_bytes{', 'k4s_boot_component_ready_seconds{component="node-ready"}'):
        assert series in body, series


def test_the_operator_saves_an_etcd_snapshot_and_restores_it_on_an_empty_server(cluster: Cluster, tmp_path) -> None:
    """`k4s etcd-snapshot save` through the server's endpoint: the database with the sha256 etcd
    sends, 0600, and the shared keys sealed beside it with the key printed once; a client without
    the operator's certificate gets neither. Then what a fleet that lost every RAM-only server
    does: `restore` makes a segment, and a new machine that boots with it and nothing else is
    the cluster again: its CA pin is the old one, a Secret written before reads back (the
    encryption key came too), and a service-account token issued before still authenticates."""
    import hashlib
    import urllib.error
    import urllib.request

    cluster.kubectl("create", "secret", "generic", "kept", "--from-literal=word=restored")
    cluster.kubectl("create", "serviceaccount", "restore-check")
    sa_token = cluster.kubectl("create", "token", "restore-check", "--duration=1h").stdout.strip()
    url = f"https://127.0.0.1:{cluster.vm.metrics_port}"
    saved = tmp_path / "etcd.db"
    r = k4s_cmd("etcd-snapshot", "save", str(saved), "--remote", url, "--kubeconfig", str(cluster.vm.kubeconfig))
    assert r.returncode == 0 and "sha256 checked" in r.stderr, r.stdout + r.stderr
    [key] = re.findall(r"^k4s\.certificate-key=([0-9a-f]{64})$", r.stdout, re.M)
    data = saved.read_bytes()
    assert hashlib.sha256(data[:-32]).digest() == data[-32:] and saved.stat().st_mode & 0o777 == 0o600
    assert b"/registry/configmaps/default/k4s-e2e-autodeploy" in data  # what the cluster holds
    keys = (tmp_path / "etcd.db.keys")
    assert keys.stat().st_mode & 0o777 == 0o600 and b"PRIVATE KEY" not in keys.read_bytes()
    assert not (tmp_path / "etcd.db.part").exists()
    anonymous = ssl_unverified()
    for path in ("/etcd/snapshot", "/etcd/keys?public-key=" + "A" * 43):
        try:
            urllib.request.urlopen(url + path, context=anonymous, timeout=30)
            raise AssertionError(f"an anonymous client got {path}")
        except urllib.error.HTTPError as e:
            assert e.code == 401, path

    segment = tmp_path / "restore.seg"
    r = k4s_cmd("etcd-snapshot", "restore", str(saved), "--segment", str(segment), env={"K4S_CERTIFICATE_KEY": key})
    assert r.returncode == 0, r.stderr
    vm = VM(tmp_path / "restored", cluster.vm.kernel, cluster.vm.initrd, port=free_port(),
            operator_dir=cluster.vm.operator.dir, join_secret=segment)
    with vm.booted(until=events.APISERVER_READY, timeout=600) as b:
        [restored] = b.events(events.ETCD_RESTORED)
        assert restored["member"] and int(restored["bytes"]) == len(data), restored
        assert any(e.get("path") == "/etc/k4s/restore" for e in b.events(events.SECRET_DELETED))
        assert vm.ca_hash == cluster.vm.ca_hash  # the same cluster CA: every join and kubeconfig still trusts it
        vm.write_kubeconfig()
        again = Cluster(vm)
        word = again.wait_for("the Secret written before the snapshot", lambda: (
            (w := again.kubectl("get", "secret", "kept", "-o", "jsonpath={.data.word}", check=False).stdout) != "", w))
        assert base64.b64decode(word) == b"restored"
        import yaml

        ca = tmp_path / "ca.crt"
        ca.write_bytes(base64.b64decode(yaml.safe_load(vm.kubeconfig.read_text())["clusters"][0]["cluster"]
                                        ["certificate-authority-data"]))
        r = subprocess.run([str(KUBECTL), "--kubeconfig", "/dev/null", "--server", f"https://127.0.0.1:{vm.port}",
                            "--certificate-authority", str(ca), "--token", sa_token,
                            "auth", "whoami", "-o", "jsonpath={.status.userInfo.username}"],
                           capture_output=True, text=True, timeout=60)
        assert r.stdout == "system:serviceaccount:default:restore-check", r.stdout + r.stderr


def ssl_unverified():  # type: ignore[no-untyped-def]
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    return ctx


PRIVILEGED = """apiVersion: v1
kind: Pod
metadata: {name: root-of-the-node}
spec:
  containers:
  - name: c
    image: k4s.local/busybox:1.36
    imagePullPolicy: Never
    command: ["cat", "/host/var/lib/k4s/pki/ca.key"]
    securityContext: {privileged: true}
    volumeMounts: [{name: host, mountPath: /host}]
  volumes: [{name: host, hostPath: {path: /}}]
"""


def test_a_privileged_pod_with_the_host_s_root_is_refused_in_default(cluster: Cluster) -> None:
    """Pod Security baseline holds every namespace that does not say why it needs more."""
    r = subprocess.run([str(KUBECTL), "--kubeconfig", str(cluster.vm.kubeconfig), "apply", "-f", "-"],
                       input=PRIVILEGED, text=True, capture_output=True, timeout=120)
    assert r.returncode != 0 and 'violates PodSecurity "baseline:latest"' in r.stderr, r.stdout + r.stderr
    assert "privileged" in r.stderr and "hostPath" in r.stderr
    assert cluster.kubectl("get", "pod", "root-of-the-node", check=False).returncode != 0


def test_containers_pivot_root_out_of_the_ram_root(cluster: Cluster) -> None:
    """Stage 0 binds the RAM root over the initramfs, so runc pivots into a container (the
    pods above run) instead of only chrooting."""
    runtimes = events.CONTAINERD_RUNTIME.all(log.read_events(cluster.vm.events))
    assert runtimes and all(r["pivot_root"] == "yes" for r in runtimes), runtimes
    assert "the root stays the initramfs" not in cluster.vm.console.read_text(errors="replace")


def test_a_node_s_serving_csr_for_the_apiserver_s_service_ip_is_denied(cluster: Cluster, tmp_path) -> None:
    """As the node itself (the operator impersonates it), a kubelet-serving CSR naming the
    `kubernetes` Service's IP beside the node's name: the approver denies it, whatever the
    Node reports. (This node is the server, whose own address no CSR may name either.)"""
    import base64
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from k4s.cluster.pki import new_key

    name = json.loads(cluster.kubectl("get", "nodes", "-o", "json").stdout)["items"][0]["metadata"]["name"]
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{name}")])).add_extension(
        x509.SubjectAlternativeName([x509.DNSName(name), x509.IPAddress(ipaddress.ip_address("10.43.0.1"))]),
        critical=False,
    ).sign(new_key(), hashes.SHA256())
    doc = {"apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
           "metadata": {"name": "mitm-apiserver"},
           "spec": {"request": base64.b64encode(csr.public_bytes(serialization.Encoding.PEM)).decode(),
                    "signerName": "kubernetes.io/kubelet-serving",
                    "usages": ["digital signature", "server auth"]}}
    r = subprocess.run([str(KUBECTL), "--kubeconfig", str(cluster.vm.kubeconfig), f"--as=system:node:{name}",
                        "--as-group=system:nodes", "--as-group=system:authenticated", "create", "-f", "-"],
                       input=json.dumps(doc), text=True, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr

    def decided():  # type: ignore[no-untyped-def]
        got = json.loads(cluster.kubectl("get", "csr", "mitm-apiserver", "-o", "json").stdout)["status"]
        return bool(got.get("conditions")), json.dumps(got)
    status = json.loads(cluster.wait_for("the CSR decided", decided, timeout=60))
    assert status["conditions"][0]["type"] == "Denied" and not status.get("certificate"), status
    assert "10.43.0.1 is in the pod or service network 10.43.0.0/16" in status["conditions"][0]["message"]


def test_a_pod_that_allocates_without_limit_takes_only_itself_down(cluster: Cluster) -> None:
    """No limit on the pod: it allocates until the pods' cgroup (RAM - kubeReserved) is full
    and the kernel kills it there, never the control plane (k4s.cluster.protect), and the node
    stays Ready throughout. The node's own processes may swap to zram; the pod may not (the
    kubelet's NoSwap), and it cannot push them there either."""
    def starts() -> dict[str, int]:
        console = cluster.vm.console.read_text(errors="replace")
        return {n: console.count(f"component={n} event=start pid=") for n in NODE_PROCESSES}
    def ready_since() -> str:
        return cluster.kubectl("get", "node", "-o", "jsonpath={.items[0].status.conditions[?(@.type=='Ready')]"
                               ".lastTransitionTime}").stdout
    before, since = starts(), ready_since()
    assert all(v >= 1 for v in before.values()), before
    node = json.loads(cluster.kubectl("get", "node", "-o", "json").stdout)["items"][0]["status"]
    total = int(node["capacity"]["memory"].removesuffix("Ki")) >> 10
    allocatable = int(node["allocatable"]["memory"].removesuffix("Ki")) >> 10
    assert allocatable == total - protect.reserved_mib("server", total) - kubelet.EVICTION_MIB
    subprocess.run([str(KUBECTL), "--kubeconfig", str(cluster.vm.kubeconfig), "apply", "-f", "-"], input=HOG,
                   text=True, check=True, capture_output=True, timeout=120)
    # its log first: an evicted pod's container, and its log, are removed at once
    cluster.wait_for("the hog's first line", lambda: (
        (r := cluster.kubectl("logs", "hog", check=False)).returncode == 0 and r.stdout.strip() != "", r.stdout + r.stderr))
    assert cluster.kubectl("logs", "hog").stdout.splitlines()[0] == "swap limit 0"
    cluster.kubectl("exec", "hog", "--", "touch", "/go")

    def ended():  # type: ignore[no-untyped-def]
        pod = json.loads(cluster.kubectl("get", "pod", "hog", "-o", "json").stdout)
        term = ((pod["status"].get("containerStatuses") or [{}])[0].get("state") or {}).get("terminated") or {}
        # the kubelet evicting it (its container then "ContainerStatusUnknown") or the kernel
        reason = pod["status"].get("reason") or term.get("reason") or ""
        return pod["status"].get("phase") == "Failed", reason
    reason = cluster.wait_for("the hog pod killed", ended, timeout=300)
    assert reason in ("OOMKilled", "Evicted"), reason
    assert starts() == before  # etcd, the apiserver, the kubelet and containerd kept their pids
    assert_node_ready(cluster.vm)
    assert ready_since() == since, "the node was not Ready for a while"
    console = cluster.vm.console.read_text(errors="replace")
    if reason == "OOMKilled":  # by the pods' cgroup limit, not with the whole machine out of memory
        assert "Memory cgroup out of memory: Killed process" in console
        assert "] Out of memory: Killed process" not in console
    assert "component=protect event=cgroup path=/sys/fs/cgroup/k4s memory_min_mib=256" in console
    assert "component=init event=zram size_mib=" in console
    assert "event=adopt-failed" not in console and "event=no-cgroup" not in console


def test_deleting_the_operators_binding_withdraws_access(cluster: Cluster) -> None:
    """Last before the poweroff: after this the host has no access."""
    from k4s.cluster import addons

    cluster.kubectl("delete", "clusterrolebinding", addons.OPERATORS_BINDING)
    op = cluster.vm.operator
    cluster.wait_for("403 for the operator", lambda: (_status(cluster, op.admin_crt, op.admin_key) == 403, ""), 60)
    r = cluster.kubectl("get", "pods", "-A", check=False)
    assert r.returncode != 0 and "forbidden" in r.stderr.lower()


def test_poweroff_stops_every_component_and_the_vm_exits(cluster: Cluster) -> None:
    assert cluster.vm.power_off(timeout=180), "QEMU did not exit by itself after the power button"
    console = cluster.vm.console.read_text(errors="replace")
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver",
                 "containerd", "etcd"):
        assert f"component={name} event=stopped" in console, name
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console


def test_the_secret_scan_finds_a_key_when_there_is_one(tmp_path) -> None:
    """The scan above can fail: a seed with a CA key in it is caught."""
    import stat

    from k4s.cluster import certs, pki
    from k4s.image import cpio

    key = pki.key_pem(pki.issue_ca(certs.CLUSTER_CA)[0])
    seed = cpio.bytes_of([cpio.Entry("var/lib/k4s/pki/x", stat.S_IFREG | 0o600, key)])
    assert secrets_in(seed, "seed", tmp_path) == ["seed:var/lib/k4s/pki/x"]

