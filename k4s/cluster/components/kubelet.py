"""kubelet: webhook authn/authz, cgroup v2 with the cgroupfs driver, serving cert from our CA."""

from __future__ import annotations

from pathlib import Path

import yaml

from k4s.cluster import certs, kubeapi, protect
from k4s.cluster.node import Node
from k4s.config import Config
from k4s.fsutil import write_atomic
from k4s.sys.mem import meminfo

BINARY = "kubelet"
HELPERS: tuple[str, ...] = ()  # mount, umount, nft: host tools packed by mkimage
NODE = True
HOST = None
READY_TIMEOUT = 180.0
HEALTHZ_PORT, PORT = 10248, 10250


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", HEALTHZ_PORT), ("0.0.0.0", PORT)]


# The node's packet rules are nftables: kube-proxy's mode and flannel's. Given iptables, the
# kubelet still makes its KUBE-IPTABLES-HINT chain and a localnet rule (for kube-proxy's
# iptables mode, which sets route_localnet; nftables mode does not) and checks them every
# minute, and kube-proxy cleans up iptables and IPVS leftovers before it serves: dozens of
# iptables forks for both families, half of kube-proxy's 12.7 s start under TCG, while the node's
# bring-up needs those CPUs. Upstream's own answer for an nftables-only host is iptables
# missing; for these two processes it is (flannel, which cleans its own iptables chains before
# it uses nftables, and containerd's CNI plugins keep it).
WITHOUT_IPTABLES = ("kubelet", "kube-proxy")
IPTABLES = ("iptables", "ip6tables", "iptables-save", "ip6tables-save", "iptables-restore", "ip6tables-restore")


def path_without_iptables(node: Node, path: str) -> str:
    """PATH for WITHOUT_IPTABLES: a directory first in it where each iptables name is `false`."""
    shadow = node.paths.run / "without-iptables"
    shadow.mkdir(parents=True, exist_ok=True)
    for name in IPTABLES:
        link = shadow / name
        if not link.is_symlink():
            link.symlink_to("/bin/false")
    return f"{shadow}:{path}"


CLIENT_PEM = "kubelet-client-current.pem"  # the kubelet's certificate manager's names for them
SERVER_PEM = "kubelet-server-current.pem"
EVICTION_MIB = 50  # the kubelet evicts pods below this much available memory


def root(node: Node) -> Path:
    return node.paths.data / "kubelet"


def cert_dir(node: Node) -> Path:
    return root(node) / "pki"


def client_pem(node: Node) -> Path:
    """An agent's node identity (certificate and key): made by the join, rotated by the kubelet."""
    return cert_dir(node) / CLIENT_PEM


def server_pem(node: Node) -> Path:
    """An agent's serving certificate and key, from its CSR (serverTLSBootstrap), rotated by the kubelet."""
    return cert_dir(node) / SERVER_PEM


def serving_pair(node: Node) -> tuple[Path, Path]:
    """The node's serving identity (certificate, key): the server's from its PKI, an agent's from
    its CSR. The k4s metrics endpoint serves with it too."""
    if node.cfg.role == "agent":
        return server_pem(node), server_pem(node)
    return node.certs.crt(certs.KUBELET_SERVER), node.certs.key(certs.KUBELET_SERVER)


def kubelet_config(node: Node) -> dict:
    """A server's kubelet has certificates from the node's own PKI; an agent's client
    certificate comes from the join and its serving certificate from a CSR the server
    approves (k4s.cluster.approver), and it rotates both."""
    c, cfg = node.certs, node.cfg
    agent = cfg.role == "agent"
    tls = {} if agent else {"tlsCertFile": str(c.crt(certs.KUBELET_SERVER)),
                            "tlsPrivateKeyFile": str(c.key(certs.KUBELET_SERVER))}
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(c.crt(certs.CLUSTER_CA))}},
        "authorization": {"mode": "Webhook"},
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{node.containerd_socket}",
        "clusterDNS": [cfg.cluster_dns],
        "clusterDomain": cfg.cluster_domain,
        **tls,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": HEALTHZ_PORT,
        "readOnlyPort": 0,
        # The node's own processes may swap to zram (k4s.sys.zram); NoSwap keeps every
        # container's memory.swap.max at 0, so pods never do.
        "failSwapOn": False,
        "memorySwap": {"swapBehavior": "NoSwap"},
        "resolvConf": "/etc/resolv.conf",
        "serializeImagePulls": False,
        # Everything is in RAM: evict on memory, not on disk percentages of a tmpfs.
        "evictionHard": {"memory.available": f"{EVICTION_MIB}Mi", "nodefs.available": "5%", "imagefs.available": "5%"},
        "imageGCHighThresholdPercent": 95,
        "imageGCLowThresholdPercent": 90,
        # kubepods gets memory.max = RAM - this: a pod cannot push the node into swap
        "kubeReserved": {"memory": f"{protect.reserved_mib(cfg.role, meminfo()['MemTotal'] >> 10)}Mi"},
        "enforceNodeAllocatable": ["pods"],
        "shutdownGracePeriod": "20s",
        "shutdownGracePeriodCriticalPods": "5s",
        "rotateCertificates": agent,  # a server's are re-issued by k4s itself
        "serverTLSBootstrap": agent,
        "containerLogMaxSize": "5Mi",
        "containerLogMaxFiles": 2,
    }


def command(node: Node) -> list[str]:
    conf = root(node) / "config.yaml"
    write_atomic(conf, yaml.safe_dump(kubelet_config(node), sort_keys=False))
    return [
        str(node.bin(BINARY)),
        f"--config={conf}",
        f"--kubeconfig={node.certs.kubeconfig(certs.KUBELET)}",
        f"--root-dir={root(node)}",
        f"--hostname-override={node.cfg.node_name}",
        f"--node-ip={node.node_ip}",
        f"--cert-dir={cert_dir(node)}",
    ]


def ready(node: Node) -> bool:
    return kubeapi.says_ok(f"http://127.0.0.1:{HEALTHZ_PORT}/healthz")
