"""kubelet: webhook authn/authz, cgroup v2 with the cgroupfs driver, serving cert from our CA."""

from __future__ import annotations

import yaml

from k4s import kubeapi
from k4s.components import Node
from k4s.fsutil import write_atomic

NAME = "kubelet"
BINARY = "kubelet"
AFTER = ("containerd", "kube-apiserver")
NODE = True
HEALTHZ_PORT = 10248


def kubelet_config(node: Node) -> dict:
    pki, cfg = node.pki, node.cfg
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "clusterDNS": [cfg.cluster_dns],
        "clusterDomain": cfg.cluster_domain,
        "tlsCertFile": str(pki / "kubelet-server.crt"),
        "tlsPrivateKeyFile": str(pki / "kubelet-server.key"),
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": HEALTHZ_PORT,
        "readOnlyPort": 0,
        "failSwapOn": False,
        "podCIDR": node.pod_subnet,
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # Everything is in RAM: evict on memory, not on disk percentages of a tmpfs.
        "evictionHard": {"memory.available": "50Mi", "nodefs.available": "5%", "imagefs.available": "5%"},
        "imageGCHighThresholdPercent": 95,
        "imageGCLowThresholdPercent": 90,
        "enforceNodeAllocatable": ["pods"],
        "shutdownGracePeriod": "20s",
        "shutdownGracePeriodCriticalPods": "5s",
        "rotateCertificates": False,  # k4s re-issues the kubelet's certificates itself
        "serverTLSBootstrap": False,
        "containerLogMaxSize": "5Mi",
        "containerLogMaxFiles": 2,
    }


def command(node: Node) -> list[str]:
    root = node.paths.data / "kubelet"
    conf = root / "config.yaml"
    write_atomic(conf, yaml.safe_dump(kubelet_config(node), sort_keys=False))
    return [
        str(node.bin(BINARY)),
        f"--config={conf}",
        f"--kubeconfig={node.paths.kubeconfig('kubelet')}",
        f"--root-dir={root}",
        f"--hostname-override={node.cfg.node_name}",
        f"--node-ip={node.node_ip}",
        f"--cert-dir={root / 'pki'}",
    ]


def ready(node: Node) -> bool:
    return kubeapi.says_ok(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz")
