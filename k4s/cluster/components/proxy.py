"""kube-proxy: Services in nftables mode."""

from __future__ import annotations

import yaml

from k4s.cluster import certs, kubeapi
from k4s.cluster.node import Node
from k4s.config import Config
from k4s.fsutil import write_atomic

BINARY = "kube-proxy"
HELPERS: tuple[str, ...] = ()
NODE = True
HOST = "kubelet"
READY_TIMEOUT = 120.0
HEALTHZ_PORT, METRICS_PORT = 10256, 10249


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", HEALTHZ_PORT), ("127.0.0.1", METRICS_PORT)]


def proxy_config(node: Node) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        # an agent's kube-proxy runs as the node (system:node-proxier is bound to system:nodes)
        "clientConnection": {"kubeconfig": str(node.certs.kubeconfig(
            certs.KUBE_PROXY if node.cfg.role == "server" else certs.KUBELET))},
        "mode": "nftables",
        "clusterCIDR": node.cfg.cluster_cidr,
        "hostnameOverride": node.cfg.node_name,
        "healthzBindAddress": f"127.0.0.1:{HEALTHZ_PORT}",
        "metricsBindAddress": f"127.0.0.1:{METRICS_PORT}",
        "conntrack": {"maxPerCore": 0},  # leave the kernel's conntrack sizing alone
    }


def command(node: Node) -> list[str]:
    conf = node.paths.data / "kube-proxy" / "config.yaml"
    write_atomic(conf, yaml.safe_dump(proxy_config(node), sort_keys=False))
    return [str(node.bin(BINARY)), f"--config={conf}"]


def ready(node: Node) -> bool:
    status, _ = kubeapi.get(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz")
    return status == 200
