"""flannel: the pod network across nodes, vxlan backend, subnets from each Node's podCIDR
(the Kubernetes subnet manager, as k3s embeds it). It runs on every node with the node's
own credentials; RBAC (k4s.cluster.addons) lets system:nodes do what it needs.

flanneld writes subnet.env once it holds its lease; the node then writes the CNI bridge
configuration from it (what flannel's CNI plugin would do at each pod's creation, done
once: the plugin only reads subnet.env and delegates to bridge and host-local).
"""

from __future__ import annotations

import json
from pathlib import Path

from k4s.cluster import certs, kubeapi
from k4s.cluster.components import containerd
from k4s.cluster.node import Node
from k4s.config import Config
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

BINARY = "flanneld"
HELPERS: tuple[str, ...] = ()  # nft: a host tool packed by mkimage
NODE = True
HOST = None  # a process of its own (upstream's main exits the process on any error)
# It starts with the node and is ready once the Node has a podCIDR (node-registered's wait).
# A worker's comes from the controller-manager's IPAM, which on a control plane that is busy or
# between leaders can take minutes (a CI run of the HA module saw 4.6); a worker that gave up
# would have spent its single-use join for nothing. node-registered's budget is this one.
READY_TIMEOUT = 900.0
HEALTHZ_PORT = 10262
BACKEND = "vxlan"
CNI_CONF = "10-flannel.conflist"


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", HEALTHZ_PORT)]


def subnet_env(node: Node) -> Path:
    return node.paths.run / "flannel" / "subnet.env"


def net_conf(node: Node) -> dict:
    return {"Network": node.cfg.cluster_cidr, "EnableNFTables": True, "Backend": {"Type": BACKEND}}


def command(node: Node) -> list[str]:
    conf = node.paths.data / "flannel" / "net-conf.json"
    write_atomic(conf, json.dumps(net_conf(node), indent=2) + "\n")
    return [
        str(node.bin(BINARY)),
        "--kube-subnet-mgr",
        f"--kubeconfig-file={node.certs.kubeconfig(certs.KUBELET)}",  # the node's identity
        f"--iface={node.interface}",
        f"--public-ip={node.node_ip}",
        "--ip-masq",
        f"--net-config-path={conf}",
        f"--subnet-file={subnet_env(node)}",
        "--healthz-ip=127.0.0.1",
        f"--healthz-port={HEALTHZ_PORT}",
    ]


def ready(node: Node) -> bool:
    """flanneld's /readyz answers 200 once subnet.env is written and its rules are in place."""
    status, _ = kubeapi.get(f"http://127.0.0.1:{HEALTHZ_PORT}/readyz")
    return status == 200 and subnet_env(node).exists()


def read_subnet_env(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        k, sep, v = line.partition("=")
        if sep:
            out[k.strip()] = v.strip()
    for k in ("FLANNEL_NETWORK", "FLANNEL_SUBNET", "FLANNEL_MTU"):
        if not out.get(k):
            raise K4sError(f"{path} has no {k}", hint="see flanneld's log")
    return out


def cni_conflist(node: Node, env: dict[str, str]) -> str:
    """The bridge network flannel's CNI plugin would delegate to: this node's lease, the
    vxlan MTU, no masquerade in the bridge (flanneld masquerades what leaves the pod network)."""
    import ipaddress

    subnet = ipaddress.IPv4Interface(env["FLANNEL_SUBNET"]).network
    return containerd.bridge_conflist(node, str(subnet), ip_masq=env.get("FLANNEL_IPMASQ") != "true",
                                      mtu=int(env["FLANNEL_MTU"]))


def write_cni_conf(node: Node) -> str:
    """The pod network from flannel's lease; returns this node's pod subnet."""
    env = read_subnet_env(subnet_env(node))
    write_atomic(node.cni_conf_dir / CNI_CONF, cni_conflist(node, env))
    return env["FLANNEL_SUBNET"]
