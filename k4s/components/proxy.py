"""kube-proxy: Services in nftables mode."""

from __future__ import annotations

import yaml

from k4s import kubeapi
from k4s.components import Node
from k4s.fsutil import write_atomic

NAME = "kube-proxy"
BINARY = "kube-proxy"
AFTER = ("kube-apiserver",)
NODE = True
HEALTHZ = "127.0.0.1:10256"


def proxy_config(node: Node) -> dict:
    return {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(node.paths.kubeconfig("kube-proxy"))},
        "mode": "nftables",
        "clusterCIDR": node.cfg.cluster_cidr,
        "hostnameOverride": node.cfg.node_name,
        "healthzBindAddress": HEALTHZ,
        "metricsBindAddress": "127.0.0.1:10249",
        "conntrack": {"maxPerCore": 0},  # leave the kernel's conntrack sizing alone
    }


def command(node: Node) -> list[str]:
    conf = node.paths.data / "kube-proxy" / "config.yaml"
    write_atomic(conf, yaml.safe_dump(proxy_config(node), sort_keys=False))
    return [str(node.bin(BINARY)), f"--config={conf}"]


def ready(node: Node) -> bool:
    status, _ = kubeapi.get(f"http://{HEALTHZ}/healthz")
    return status == 200
