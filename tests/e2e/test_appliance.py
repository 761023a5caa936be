"""Boot -> node Ready -> CoreDNS -> workloads, DNS, a Service -> clean poweroff, in QEMU."""

from __future__ import annotations

import json

from tests.e2e.conftest import Cluster


def test_node_is_ready(cluster: Cluster) -> None:
    r = cluster.kubectl("get", "nodes", "-o", "json")
    [node] = json.loads(r.stdout)["items"]
    conds = {c["type"]: c["status"] for c in node["status"]["conditions"]}
    assert conds["Ready"] == "True"
    assert node["status"]["nodeInfo"]["kubeletVersion"] == "v1.35.4"
    assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.2")


def test_coredns_becomes_ready(cluster: Cluster) -> None:
    def probe():  # type: ignore[no-untyped-def]
        r = cluster.kubectl("-n", "kube-system", "get", "deploy", "coredns", "-o",
                            "jsonpath={.status.availableReplicas}", check=False)
        return r.stdout.strip() == "1", r.stdout + r.stderr
    cluster.wait_for("CoreDNS available", probe, timeout=400)


def run_pod(cluster: Cluster, name: str, *command: str, timeout: float = 300) -> str:
    cluster.kubectl("run", name, "--image=k4s.local/busybox:1.36", "--image-pull-policy=Never",
                    "--restart=Never", "--command", "--", *command)

    def probe():  # type: ignore[no-untyped-def]
        r = cluster.kubectl("get", "pod", name, "-o", "jsonpath={.status.phase}", check=False)
        return r.stdout in ("Succeeded", "Failed"), r.stdout + r.stderr
    phase = cluster.wait_for(f"pod {name} finished", probe, timeout)
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

    def ready():  # type: ignore[no-untyped-def]
        r = cluster.kubectl("get", "deploy", "web", "-o", "jsonpath={.status.availableReplicas}", check=False)
        return r.stdout.strip() == "1", r.stdout + r.stderr
    cluster.wait_for("web available", ready)
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


def test_poweroff_stops_every_component_and_the_vm_exits(cluster: Cluster) -> None:
    assert cluster.vm.power_off(timeout=180), "QEMU did not exit by itself after the power button"
    console = cluster.vm.console.read_text(errors="replace")
    for name in ("kube-proxy", "kubelet", "kube-scheduler", "kube-controller-manager", "kube-apiserver",
                 "containerd", "etcd"):
        assert f"component={name} event=stopped" in console, name
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console
