"""A fleet of two in QEMU: a server, and a worker that joins it with the line `k4s token create`
prints, on a virtual L2 this test makes (the server VM's QEMU hub, other VMs on loopback
sockets). Then what users check: both Ready, pods talk across nodes, a Service and DNS work
from either side, bad joins are refused with one line, and a worker powered off hands its pods
back and comes back when it boots again."""

from __future__ import annotations

import base64
import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from k4s import events, log
from k4s.cluster.tasks import DRAINED_ANNOTATION
from k4s.host import fleet as fleet_vms
from k4s.host.vm import VM
from tests.conftest import k4s_cmd, require
from tests.e2e.conftest import KUBECTL, Cluster, boot_side_by_side, free_port, make_vm

WORKER_MAC = "52:54:00:00:77:02"
WORKER_NAME = fleet_vms.node_name(WORKER_MAC)
BAD_JOINS = 2


def worker_vm(tmp: Path, port: int, join: str, mac: str, ip: str, memory: int = 1024) -> VM:
    """A lan-only worker whose only secret is its join (the line `k4s token create` printed), in
    its own initrd segment, never on its command line."""
    base = make_vm(tmp)
    tmp.mkdir(parents=True, exist_ok=True)
    (tmp / "join").write_text(join)
    return fleet_vms.worker(tmp, base.kernel, base.initrd, port, mac, ip, tmp / "join", memory)


@dataclass
class Fleet:
    server: Cluster
    worker: VM
    join_line: str
    ports: list[int]
    tmp: Path

    def kubectl(self, *args: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return self.server.kubectl(*args, check=check, timeout=timeout)

    def wait_for(self, what: str, probe, timeout: float = 300) -> str:  # type: ignore[no-untyped-def]
        return self.server.wait_for(what, probe, timeout)


def token_create(server: VM, *args: str) -> str:
    """The whole join (token included) `k4s token create` prints for one machine."""
    r = fleet_vms.token_create(server.kubeconfig, *args)
    line = r.stdout.strip()
    assert line.startswith("k4s.role=agent k4s.server=https://10.77.0.1:6443 k4s.ca-hash=sha256:"), line
    assert "k4s.token=" in line and "holds a secret" in r.stderr, (line, r.stderr)
    return line


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("fleet")
    ports = [free_port() for _ in range(1 + BAD_JOINS)]
    base = make_vm(tmp / "server")
    server = fleet_vms.server(tmp / "server", base.kernel, base.initrd, tuple(ports), port=base.port)
    with server.booted():
        server.write_kubeconfig()
        line = token_create(server, "--node", WORKER_NAME)
        worker = worker_vm(tmp / "worker", ports[0], line, WORKER_MAC, "10.77.0.2")
        with worker.booted(timeout=600):
            f = Fleet(Cluster(server), worker, line, ports, tmp)
            # the worker's Node is Ready once its pod network is; its serving certificate (logs,
            # exec) once the server's approver has decided the request (at once if the Node had
            # its addresses when it was made, else at its next round, approver.INTERVAL)
            f.wait_for("the worker's serving certificate", lambda: serving_issued(f), timeout=60)
            yield f


def worker_serving_csrs(fleet: Fleet) -> list[dict]:
    """The kubelet-serving CSRs the worker's node made for itself."""
    csrs = json.loads(fleet.kubectl("get", "csr", "-o", "json").stdout)["items"]
    return [c for c in csrs if c["spec"]["signerName"] == "kubernetes.io/kubelet-serving"
            and c["spec"]["username"] == f"system:node:{WORKER_NAME}"]


def serving_issued(fleet: Fleet) -> tuple[bool, str]:
    mine = worker_serving_csrs(fleet)
    return any(c["status"].get("certificate") for c in mine), json.dumps([c["status"] for c in mine])[-1500:]


def nodes(fleet: Fleet) -> dict[str, dict]:
    return {n["metadata"]["name"]: n for n in json.loads(fleet.kubectl("get", "nodes", "-o", "json").stdout)["items"]}


def ready(node: dict) -> str:
    return {c["type"]: c["status"] for c in node["status"]["conditions"]}["Ready"]


def test_both_nodes_are_ready_and_the_worker_joined_through_csrs(fleet: Fleet) -> None:
    ns = nodes(fleet)
    assert len(ns) == 2 and all(ready(n) == "True" for n in ns.values()), ns.keys()
    worker = ns[WORKER_NAME]
    assert {a["address"] for a in worker["status"]["addresses"] if a["type"] == "InternalIP"} == {"10.77.0.2"}
    csrs = json.loads(fleet.kubectl("get", "csr", "-o", "json").stdout)["items"]
    token_id = token_of(fleet.join_line).split(".")[0]

    def approved(c: dict) -> bool:
        return any(x["type"] == "Approved" for x in c["status"].get("conditions", [])) and bool(c["status"].get("certificate"))
    # TLS bootstrap: the node's client certificate asked for with the token, approved by the server's approver
    client = [c for c in csrs if c["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
              and c["spec"]["username"] == f"system:bootstrap:{token_id}"]
    assert client and all(approved(c) for c in client), csrs
    # its serving certificate asked for by the node itself, approved by the server's approver
    serving = worker_serving_csrs(fleet)
    assert serving and all(approved(c) for c in serving), serving
    # the worker's own clients reach the control plane through its load balancer, which learned
    # the apiservers from the cluster's `kubernetes` Endpoints, asked through itself
    learned = [e for e in log.read_events(fleet.worker.events) if events.APILB_SERVERS.matches(e)]
    assert learned and learned[0]["servers"] == f"{fleet_vms.SERVER_IP}:6443", learned


def test_a_kubelet_s_serving_certificate_is_no_certificate_for_the_apiserver(fleet: Fleet, tmp_path: Path) -> None:
    """The worker's serving certificate comes from the kubelet-serving CA: it does not verify
    against the CA every client trusts for the apiserver (one CA per purpose)."""
    cert = next(c["status"]["certificate"] for c in worker_serving_csrs(fleet) if c["status"].get("certificate"))
    (tmp_path / "kubelet.crt").write_bytes(base64.b64decode(cert))
    kc = yaml.safe_load(fleet.server.vm.kubeconfig.read_text())
    (tmp_path / "ca.crt").write_bytes(base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]))
    r = subprocess.run(["openssl", "verify", "-CAfile", str(tmp_path / "ca.crt"), str(tmp_path / "kubelet.crt")],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "unable to get local issuer certificate" in r.stdout + r.stderr, r.stdout + r.stderr
    issuer = subprocess.run(["openssl", "x509", "-noout", "-issuer", "-in", str(tmp_path / "kubelet.crt")],
                            capture_output=True, text=True, timeout=30).stdout
    assert "kubelet-serving-ca" in issuer, issuer


def wait_spent(fleet: Fleet, token_id: str) -> None:
    """Until `k4s token list` no longer shows the token: the server deletes a used one once its
    certificate has been out for approver.SPEND_GRACE seconds."""
    def gone() -> tuple[bool, str]:
        listed = k4s_cmd("token", "list", "--kubeconfig", str(fleet.server.vm.kubeconfig))
        return listed.returncode == 0 and token_id not in listed.stdout, listed.stdout + listed.stderr

    fleet.wait_for(f"token {token_id} spent", gone, timeout=120)


def test_the_worker_s_token_is_spent_and_never_on_its_command_line(fleet: Fleet, web: dict[str, str]) -> None:
    wait_spent(fleet, token_of(fleet.join_line).split(".")[0])
    console = fleet.worker.console.read_text(errors="replace")
    assert "component=join event=secret-deleted" in console and token_of(fleet.join_line) not in console
    # what a pod on the worker could read of the kernel command line: nothing (masked, and no secret
    # on it anyway), while the rest of /proc is there
    r = fleet.kubectl("exec", "web-worker", "--", "sh", "-c", "wc -c < /proc/cmdline; head -1 /proc/self/status")
    assert r.stdout.split() == ["0", "Name:", "head"], r.stdout + r.stderr


def csr_as_token(fleet: Fleet, token: str, node: str) -> dict:
    """What a token holder gets for a node-client CSR naming `node`: the CSR once decided."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509.oid import NameOID

    from k4s.cluster import kubeapi
    from k4s.cluster.pki import new_key

    kc = yaml.safe_load(fleet.server.vm.kubeconfig.read_text())
    ca = base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]).decode()
    import ssl
    client = kubeapi.Client("127.0.0.1", fleet.server.vm.port, ssl.create_default_context(cadata=ca), bearer=token)
    req = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
        x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}")])).sign(new_key(), hashes.SHA256())
    made = client.json("POST", "/apis/certificates.k8s.io/v1/certificatesigningrequests", {
        "apiVersion": "certificates.k8s.io/v1", "kind": "CertificateSigningRequest",
        "metadata": {"generateName": "attacker-"},
        "spec": {"request": base64.b64encode(req.public_bytes(serialization.Encoding.PEM)).decode(),
                 "signerName": "kubernetes.io/kube-apiserver-client-kubelet", "usages": ["digital signature", "client auth"]}})
    name = made["metadata"]["name"]

    def decided():  # type: ignore[no-untyped-def]
        got = json.loads(fleet.kubectl("get", "csr", name, "-o", "json").stdout)
        return bool(got["status"].get("conditions")), json.dumps(got["status"])
    return json.loads(fleet.wait_for(f"csr {name} decided", decided, timeout=60))


def test_a_token_holder_cannot_become_the_server_s_node_or_a_ready_one(fleet: Fleet) -> None:
    server_node = next(n for n in nodes(fleet) if n != WORKER_NAME)
    for node, why in ((server_node, "is the server's own node"), (WORKER_NAME, "exists and is Ready")):
        status = csr_as_token(fleet, token_of(token_create(fleet.server.vm)), node)
        verdict = status["conditions"][0]
        assert verdict["type"] == "Denied" and why in verdict["message"] and not status.get("certificate"), status


def test_the_token_can_only_ask_for_a_node_certificate(fleet: Fleet, tmp_path: Path) -> None:
    kc = yaml.safe_load(fleet.server.vm.kubeconfig.read_text())
    ca = tmp_path / "ca.crt"
    ca.write_bytes(base64.b64decode(kc["clusters"][0]["cluster"]["certificate-authority-data"]))
    token = token_of(token_create(fleet.server.vm))  # the worker's own was spent when it joined

    def can_i(*what: str) -> str:
        r = subprocess.run([str(KUBECTL), "--kubeconfig=/dev/null", f"--server=https://127.0.0.1:{fleet.server.vm.port}",
                            f"--certificate-authority={ca}", f"--token={token}", "auth", "can-i", *what],
                           capture_output=True, text=True, timeout=60)
        return r.stdout.strip()
    assert can_i("create", "certificatesigningrequests.certificates.k8s.io") == "yes"
    assert can_i("get", "secrets", "-n", "kube-system") == "no"
    assert can_i("list", "nodes") == "no"
    assert can_i("create", "pods") == "no"


POD = """apiVersion: v1
kind: Pod
metadata: {{name: {name}, labels: {{app: {app}}}}}
spec:
  nodeName: {node}
  containers:
  - name: web
    image: k4s.local/busybox:1.36
    imagePullPolicy: Never
    command: ["sh", "-c", "mkdir -p /www && echo hello-from-{name} > /www/index.html && exec httpd -f -p 8080 -h /www"]
"""
SERVICE = """apiVersion: v1
kind: Service
metadata: {name: on-worker}
spec:
  selector: {app: on-worker}
  ports: [{port: 80, targetPort: 8080}]
"""


def http_get(fleet: Fleet, pod: str, host: str, port: int) -> str:
    # Debian's static busybox wget crashes without the NSS libraries; nc does plain HTTP fine
    r = fleet.kubectl("exec", pod, "--", "sh", "-c",
                      f'printf "GET / HTTP/1.0\\r\\n\\r\\n" | nc -w 5 {host} {port} | tail -1', check=False)
    return r.stdout.strip() + r.stderr.strip()


@pytest.fixture(scope="module")
def web(fleet: Fleet) -> dict[str, str]:
    """An httpd pod pinned to each node (and a Service for the worker's); name -> pod IP."""
    server_node = next(n for n in nodes(fleet) if n != WORKER_NAME)
    docs = POD.format(name="web-server", app="on-server", node=server_node) + "---\n" + \
        POD.format(name="web-worker", app="on-worker", node=WORKER_NAME) + "---\n" + SERVICE
    subprocess.run([str(KUBECTL), "--kubeconfig", str(fleet.server.vm.kubeconfig), "apply", "-f", "-"],
                   input=docs, text=True, check=True, capture_output=True, timeout=120)
    fleet.kubectl("wait", "--for=condition=Ready", "pod/web-server", "pod/web-worker", "--timeout=300s", timeout=330)
    pods = json.loads(fleet.kubectl("get", "pods", "-o", "json").stdout)["items"]
    return {p["metadata"]["name"]: p["status"]["podIP"] for p in pods if p["metadata"]["name"].startswith("web-")}


def test_pods_reach_each_other_across_nodes(fleet: Fleet, web: dict[str, str]) -> None:
    assert web["web-server"].startswith("10.42.") and web["web-worker"].startswith("10.42.")
    assert web["web-server"].rsplit(".", 1)[0] != web["web-worker"].rsplit(".", 1)[0]  # a /24 per node
    assert http_get(fleet, "web-server", web["web-worker"], 8080) == "hello-from-web-worker"
    assert http_get(fleet, "web-worker", web["web-server"], 8080) == "hello-from-web-server"


def test_a_service_reached_from_the_server_is_served_on_the_worker(fleet: Fleet, web: dict[str, str]) -> None:
    ip = fleet.kubectl("get", "svc", "on-worker", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert http_get(fleet, "web-server", ip, 80) == "hello-from-web-worker"
    assert http_get(fleet, "web-server", "on-worker.default.svc.cluster.local", 80) == "hello-from-web-worker"


def test_a_pod_on_the_worker_resolves_cluster_dns(fleet: Fleet, web: dict[str, str]) -> None:
    # exec and logs both go through the worker's kubelet, checked against the cluster CA
    r = fleet.kubectl("exec", "web-worker", "--", "nslookup", "on-worker.default.svc.cluster.local")
    ip = fleet.kubectl("get", "svc", "on-worker", "-o", "jsonpath={.spec.clusterIP}").stdout
    assert ip in r.stdout, r.stdout
    assert "httpd" not in fleet.kubectl("logs", "web-worker").stdout  # the log is readable (and quiet)


def test_the_worker_s_metrics_endpoint_refuses_a_client_without_credentials(fleet: Fleet) -> None:
    """The worker serves k4s's metrics with the serving certificate its CSR got. The apiserver's node
    proxy presents no client certificate and drops the caller's token: the worker answers 401, so
    the proxy is no way around the endpoint's own authentication."""
    import http.client
    import ssl

    op = fleet.server.vm.operator
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    ctx.load_cert_chain(op.admin_crt, op.admin_key)

    def probe():  # type: ignore[no-untyped-def]
        conn = http.client.HTTPSConnection("127.0.0.1", fleet.server.vm.port, context=ctx, timeout=30)
        try:
            conn.request("GET", f"/api/v1/nodes/https:{WORKER_NAME}:10270/proxy/metrics")
            r = conn.getresponse()
            body = r.read().decode(errors="replace")
        finally:
            conn.close()
        return r.status == 401 and "present a client certificate" in body, f"{r.status} {body[:300]}"
    fleet.wait_for("the worker's metrics endpoint", probe, timeout=120)


def token_of(line: str) -> str:
    return line.split("k4s.token=")[1].split()[0]


# a join, changed: what its one console line must say. spent: the worker's own. A wrong CA pin and a
# wrong secret are refused by the same discovery code: tests/unit/test_join.py refuses them.
BAD = {
    "expired-token": ("expired", lambda spent, expired: expired),
    "spent-token": ("unknown or expired", lambda spent, expired: spent),  # used when the worker joined
}


def test_bad_joins_are_refused_with_one_line_and_no_credentials(fleet: Fleet) -> None:
    """Tokens the cluster no longer holds: one console line, no kubelet, a poweroff. The machines
    boot side by side."""
    expired = token_create(fleet.server.vm, "--ttl", "1s")
    wait_spent(fleet, token_of(fleet.join_line).split(".")[0])
    time.sleep(3)
    vms = [worker_vm(fleet.tmp / name, fleet.ports[1 + i], line_of(fleet.join_line, expired),
                     f"52:54:00:00:77:{0x10 + i:02x}", f"10.77.0.{10 + i}", memory=512)
           for i, (name, (_, line_of)) in enumerate(BAD.items())]
    for name, (rc, console) in zip(BAD, boot_side_by_side(vms, timeout=600), strict=True):
        assert rc == 0  # on-failure=poweroff: QEMU exits by itself
        errors = [ln for ln in console.splitlines() if ln.startswith("k4s init: error:")]
        assert len(errors) == 1 and BAD[name][0] in errors[0], (name, errors, console[-2000:])
        assert "component=kubelet event=start" not in console, name
        assert "reboot: Power down" in console, name
    assert len(nodes(fleet)) == 2  # none of them registered
    csrs = json.loads(fleet.kubectl("get", "csr", "-o", "json").stdout)["items"]
    assert not [c for c in csrs if c["spec"]["username"] == f"system:bootstrap:{token_of(expired).split('.')[0]}"]


MOVER = f"""apiVersion: apps/v1
kind: Deployment
metadata: {{name: mover}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: mover}}}}
  template:
    metadata: {{labels: {{app: mover}}}}
    spec:
      terminationGracePeriodSeconds: 5
      affinity:
        nodeAffinity:
          preferredDuringSchedulingIgnoredDuringExecution:
          - weight: 100
            preference: {{matchExpressions: [{{key: kubernetes.io/hostname, operator: In, values: [{WORKER_NAME}]}}]}}
      containers:
      - name: m
        image: k4s.local/busybox:1.36
        imagePullPolicy: Never
        command: ["sh", "-c", "trap 'exit 0' TERM; while true; do sleep 1; done"]
"""


def mover_node(fleet: Fleet) -> str:
    pods = json.loads(fleet.kubectl("get", "pods", "-l", "app=mover", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running" and not p["metadata"].get("deletionTimestamp")]
    return running[0]["spec"]["nodeName"] if len(running) == 1 else ""


def test_a_worker_powered_off_drains_and_its_pods_move(fleet: Fleet) -> None:
    subprocess.run([str(KUBECTL), "--kubeconfig", str(fleet.server.vm.kubeconfig), "apply", "-f", "-"],
                   input=MOVER, text=True, check=True, capture_output=True, timeout=120)
    fleet.wait_for("mover running on the worker", lambda: (mover_node(fleet) == WORKER_NAME, mover_node(fleet)))
    fleet.kubectl("delete", "pod", "web-worker", "--wait=false", check=False)  # httpd ignores TERM: not this test's
    assert fleet.worker.power_off(180), "the worker did not power itself off"
    console = fleet.worker.console.read_text(errors="replace")
    assert "component=drain event=done" in console, console[-3000:]
    node = nodes(fleet)[WORKER_NAME]
    assert node["spec"].get("unschedulable") is True
    # NotReady at once, as the kubelet's graceful shutdown says it: not Unknown after the node
    # controller's grace period
    [cond] = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert (cond["status"], cond["message"]) == ("False", "node is shutting down"), cond
    where = fleet.wait_for("mover running on the server", lambda: (mover_node(fleet) not in ("", WORKER_NAME),
                                                                  mover_node(fleet)), timeout=120)
    assert where != WORKER_NAME


SEALED_DATA = "k4s.data=LABEL=K4SDATA k4s.data-format=1 k4s.data-encrypt=tpm"


@pytest.fixture(scope="module")
def rejoined() -> dict:
    """What the rejoin left for the sealed disk's test: the machine, its payload."""
    return {}


def test_the_worker_rejoins_through_stage1_with_a_join_minted_for_it(fleet: Fleet, tmp_path: Path, rejoined: dict,
                                                                     https_stage1: tuple[Path, tuple[Path, Path]]) -> None:
    """With a blank disk this time, the worker comes back by PXE under UEFI Secure Boot: the firmware (the
    project's keys enrolled) boots its NIC, which the network hands the signed stage-1 UKI,
    and runs it once it verifies; the UKI's signed command line names the payload; stage 1 fetches the signed stage 2 and, since it is a worker's
    payload, this machine's own join from `netboot serve --kubeconfig` (a single-use token
    bound to the name its MAC gives), which it hands on as a segment, then kexecs the kernel
    the locked-down kernel checks against db. A new kubelet identity, the same Node, uncordoned.
    Its blank disk becomes a LUKS2 volume whose key the TPM seals to PCR 7+15 (Secure Boot, and
    the payload stage 1 measured): the node keeps its state there, and nothing of it is
    readable on the disk."""
    from k4s.host import netboot
    from k4s.host.vm import CMDLINE
    from k4s.mkimage import uki
    from tests.conftest import OUT
    from tests.e2e.conftest import KEYS, UEFI_VARS, firmware_lines

    require((KEYS / "db.key").exists() and UEFI_VARS.exists(), "the Secure Boot keys and store", "make stage1")
    payload = tmp_path / "payload"
    # the join's public half (role, server, CA pin) signed on the command line; the token and the
    # name only in the join, fetched over https (a user NIC for the payload first, the lan second,
    # as on the server)
    public = netboot.join_line(fleet.server.vm.kubeconfig)
    netboot.prepare(payload, fleet.worker.kernel, [fleet.worker.initrd],
                    f"{CMDLINE} {public} k4s.interface=eth1 k4s.ip=10.77.0.2/24 k4s.mgmt-interface=eth0 {SEALED_DATA}",
                    key=KEYS / "signing.key", parts=netboot.parts_from_report(OUT / "image-report.json"),
                    secure_boot_keys=KEYS)
    stage1, tls = https_stage1
    srv = netboot.serve_in_thread(payload, tls=tls, mint=netboot.JoinMinter(fleet.server.vm.kubeconfig))
    # the UKI a UEFI NIC boots (QEMU's DHCP names it, its TFTP serves it), its payload URL signed in
    uki.build(OUT / "vmlinuz", stage1, f"{CMDLINE} k4s.payload=https://10.0.2.2:{srv.server_address[1]}/ "
              "k4s.interface=eth0", payload / netboot.UEFI_IMAGE, KEYS)
    vm = make_vm(tmp_path / "worker")
    vm.uefi, vm.pxe, vm.secure_boot, vm.uefi_vars, vm.seeded = True, payload, True, UEFI_VARS, False
    vm.tpm = True  # stage 1 measures the payload into PCR 15 before the kexec
    vm.lan_connect, vm.lan_mgmt, vm.mac = fleet.ports[0], True, WORKER_MAC
    vm.disk = tmp_path / "worker" / "data.qcow2"
    rejoined.update(vm=vm, payload=payload)
    try:
        with vm.booted(timeout=900) as b:
            node = nodes(fleet)[WORKER_NAME]
            assert ready(node) == "True" and not node["spec"].get("unschedulable"), node["spec"]
            assert DRAINED_ANNOTATION not in (node["metadata"].get("annotations") or {}), node["metadata"]
            assert {a["address"] for a in node["status"]["addresses"] if a["type"] == "InternalIP"} == {"10.77.0.2"}
            console = b.console()
            # the firmware's own PXE fetched the UKI and verified it; Secure Boot from the firmware
            # to stage 2: both kernels locked down
            [started] = [ln for ln in firmware_lines(console) if ln.startswith("BdsDxe: starting")]
            assert '"UEFI PXEv4 (MAC:525400007702)' in started, started
            for which in (events.STAGE1_FIRMWARE, events.FIRMWARE):
                [fw] = b.events(which)
                assert (fw["firmware"], fw["secure_boot"], fw["lockdown"]) == ("uefi", "on", "integrity"), fw
            # measured boot: PCR 15 holds what the operator predicts from the signed payload alone,
            # zeros before stage 1 measured, and stage 2 reads the same value (kexec keeps the TPM)
            r = k4s_cmd("verify", str(payload), "--pubkey", str(KEYS / "signing.pub"), "--pcr")
            [line] = [ln for ln in r.stdout.splitlines() if ln.startswith("pcr15 sha256:")]
            predicted = line.split()[1].removeprefix("sha256:")
            [measured] = b.events(events.STAGE1_MEASURED)
            assert measured["tpm"] is True and measured["extended"] == 3 and measured["value"] == predicted, measured
            assert b.events(events.STAGE1_FIRMWARE)[0]["pcr15"] == "00" * 32
            [fw2] = b.events(events.FIRMWARE)
            assert fw2["pcr15"] == predicted
            # and stage 2 holds stage 1's log of those three extends, which replays to that value
            assert (fw2["log_events"], fw2["log_replays"]) == ("3", "yes"), fw2
            # over https, checked against the CA built into stage 1: the signed manifest, every artifact,
            # then the kexec; stage 0 checks each squashfs part against the signed list handed on
            verified = {e["file"] for e in b.events(events.STAGE1_VERIFIED)}
            assert verified == {"vmlinuz", "initramfs.cpio.zst"}, verified
            assert "k4s stage 0: 4 parts match the signed manifest" in console
            [join] = b.events(events.STAGE1_JOIN)
            assert join["found"] is True and join["source"] == "/join/525400007702", console[-3000:]
            # uncordoned by this boot, or by one that locked up under TCG after it did (vm.boot boots
            # once more then, and the Node it finds is schedulable already)
            locked = vm.out / "console-lockup.log"
            assert any("event=uncordoned" in c for c in (console, locked.read_text(errors="replace") if locked.exists() else ""))
            assert b.events(events.SECRET_DELETED)
            assert console.index("(kexec)") < console.index("k4s init: starting")
            [joined] = b.events(events.JOINED)
            wait_spent(fleet, joined["token"])
            # the sealed disk: formatted, its key sealed, and the node's state on it
            [sealed] = b.events(events.DATA_SEALED)
            assert sealed["pcrs"] == "7+15", sealed
            [mounted] = b.events(events.DATA_MOUNTED)
            assert mounted["device"] == sealed["device"] and mounted["label"] == "K4SDATA", mounted
    finally:
        srv.shutdown()
    # what it wrote is on the disk only as ciphertext: no directory name of containerd's or the kubelet's
    assert not contains(vm.disk, (b"io.containerd.content.v1", b"kubelet", WORKER_NAME.encode()))


def contains(path: Path, needles: tuple[bytes, ...], chunk: int = 8 << 20) -> bool:
    overlap = max(map(len, needles))
    with open(path, "rb") as f:
        tail = b""
        while block := f.read(chunk):
            window = tail + block
            if any(n in window for n in needles):
                return True
            tail = window[-overlap:]
    return False


def test_the_sealed_disk_opens_only_under_its_payload(fleet: Fleet, tmp_path: Path, rejoined: dict,
                                                     https_stage1: tuple[Path, tuple[Path, Path]]) -> None:
    """Two machines boot that disk (copy-on-write overlays of it) and the worker's TPM state
    through the same signed stage 1, side by side, each until its data disk opens or stays
    locked: under the same payload it opens, with the node's state from before; under payload B
    (the same kernel and initramfs, signed by the same owner, but another manifest: another PCR
    15) it stays locked, saying which PCR moved. (The same disk on another machine's TPM stays
    locked too: tests/unit/test_sealeddisk.py, against libtpms.)"""
    import shutil

    from k4s.host import netboot
    from k4s.host.vm import CMDLINE, Console
    from k4s.mkimage import uki
    from tests.conftest import OUT, tool
    from tests.e2e.conftest import KEYS, UEFI_VARS

    require("vm" in rejoined, "the rejoined worker's sealed disk", "test_the_worker_rejoins_through_stage1...")
    worker: VM = rejoined["vm"]
    payload_a: Path = rejoined["payload"]
    payload_b = tmp_path / "payload-b"
    manifest_a = json.loads((payload_a / "manifest.json").read_text())
    netboot.prepare(payload_b, fleet.worker.kernel, [fleet.worker.initrd], manifest_a["cmdline"],
                    key=KEYS / "signing.key", parts=netboot.parts_from_report(OUT / "image-report.json"),
                    serial=manifest_a["serial"] + 1, secure_boot_keys=KEYS)
    stage1, tls = https_stage1
    # each is handed a join minted for the worker's name, as at the rejoin: neither gets as far as using it
    minter = netboot.JoinMinter(fleet.server.vm.kubeconfig)
    servers = {name: netboot.serve_in_thread(d, tls=tls, mint=minter) for name, d in (("a", payload_a), ("b", payload_b))}
    try:
        machines = []
        for name, srv in servers.items():
            efi = tmp_path / f"{name}.efi"
            uki.build(OUT / "vmlinuz", stage1, f"{CMDLINE} k4s.payload=https://10.0.2.2:{srv.server_address[1]}/ "
                      "k4s.interface=eth0", efi, KEYS)
            vm = make_vm(tmp_path / name)
            vm.efi, vm.secure_boot, vm.uefi_vars, vm.seeded, vm.tpm = (efi,), True, UEFI_VARS, False, True
            vm.mac, vm.disk = WORKER_MAC, tmp_path / name / "data.qcow2"
            vm.disk.parent.mkdir(parents=True, exist_ok=True)
            subprocess.run([tool("qemu-img"), "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", str(worker.disk),
                            str(vm.disk)], check=True, timeout=60)
            shutil.copytree(worker.out / "tpm", vm.out / "tpm", ignore=shutil.ignore_patterns("*.sock"))
            machines.append(vm)
        (_, again), (_, other_payload) = boot_side_by_side(machines, timeout=600,
                                                          until=[events.DATA_MOUNTED, Console("stays locked")])
    finally:
        for srv in servers.values():
            srv.shutdown()
    assert "component=data event=unsealed" in again and "component=data event=mounted" in again, again[-3000:]
    assert "stays locked" not in again and "event=format" not in again
    mounted = again[again.index("component=data event=mounted"):].splitlines()[0]
    assert "label=K4SDATA" in mounted and "used_mib=0 " not in mounted, mounted
    [line] = [ln for ln in other_payload.splitlines() if "stays locked" in ln]
    assert "PCR 15 (the payload) holds" in line and "PCR 7" not in line, line
    assert "component=data event=mounted" not in other_payload and "event=format" not in other_payload
