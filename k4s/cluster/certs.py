"""The node's certificates and kubeconfigs as data: the one table of their names,
subjects and SANs, laid out like kubeadm's.

    <data-dir>/pki/ca.{crt,key}                      cluster CA
    <data-dir>/pki/etcd/ca.{crt,key}                 etcd CA
    <data-dir>/pki/front-proxy-ca.{crt,key}          aggregation-layer CA
    <data-dir>/pki/kubelet-serving-ca.{crt,key}      kubelets' serving certificates (only the apiserver trusts it)
    <data-dir>/pki/<leaf>.{crt,key}                  serving and client certificates
    <data-dir>/pki/sa.{key,pub}                      service-account signing keys
    <data-dir>/kubeconfig/<user>.conf                one kubeconfig per client identity

`k4s.cluster.pki` issues what this table names; the component modules read
their files through `Files` by these names. Nothing here imports cryptography,
so PID 1 and the component modules can use it for free.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

SERVER = "server"
CLIENT = "client"


@dataclass(frozen=True)
class CA:
    name: str          # file stem under pki/, e.g. "etcd/ca"
    common_name: str


@dataclass(frozen=True)
class Leaf:
    name: str
    ca: CA
    common_name: str
    organizations: tuple[str, ...] = ()
    usages: tuple[str, ...] = (CLIENT,)
    dns_names: tuple[str, ...] = ()
    ip_addresses: tuple[str, ...] = ()
    kubeconfig: str | None = None  # write <data-dir>/kubeconfig/<this>.conf for the identity

    def sans(self) -> set[str]:
        return {f"DNS:{d}" for d in self.dns_names} | {f"IP:{i}" for i in self.ip_addresses}


CLUSTER_CA = CA("ca", "kubernetes-ca")
ETCD_CA = CA("etcd/ca", "etcd-ca")
FRONT_PROXY_CA = CA("front-proxy-ca", "front-proxy-ca")
# One CA per purpose: a kubelet's serving certificate is asked for by the node itself (a CSR
# the server approves), so the CA that signs it must not be one any client trusts for the
# apiserver: only the apiserver trusts it, and only for kubelets (--kubelet-certificate-authority).
KUBELET_SERVING_CA = CA("kubelet-serving-ca", "kubelet-serving-ca")
CAS = (CLUSTER_CA, ETCD_CA, FRONT_PROXY_CA, KUBELET_SERVING_CA)

# Leaf file stems: what the components name.
APISERVER = "apiserver"
APISERVER_KUBELET_CLIENT = "apiserver-kubelet-client"
APISERVER_ETCD_CLIENT = "apiserver-etcd-client"
ETCD_SERVER = "etcd/server"
ETCD_PEER = "etcd/peer"
FRONT_PROXY_CLIENT = "front-proxy-client"
KUBELET_SERVER = "kubelet-server"
ADMIN = "admin"
SUPER_ADMIN = "super-admin"  # system:masters: bootstrap's first RBAC only (kubeadm's super-admin.conf)
CONTROLLER_MANAGER = "controller-manager"
SCHEDULER = "scheduler"
# their serving certificates (on 127.0.0.1): without one, each generates a self-signed
# RSA key at every start, 2 s of CPU under emulation on the way to Ready (pprof)
CONTROLLER_MANAGER_SERVING = "controller-manager-serving"
SCHEDULER_SERVING = "scheduler-serving"
KUBELET = "kubelet"
KUBE_PROXY = "kube-proxy"
SERVICE_ACCOUNT = "sa"  # a key pair, not a certificate: sa.key, sa.pub
ENCRYPTION_CONFIG = "encryption-config.yaml"
# The operator's CA: its certificate only (the key stays on the operator's host). Seeded
# into the node, which then trusts it for client certificates beside its own CA.
OPERATOR_CA = "operator-ca"
CLIENT_CA_BUNDLE = "client-ca"  # the cluster CA + the operator CA: the apiserver's --client-ca-file
OPERATORS_GROUP = "k4s:cluster-admins"  # bound to cluster-admin by bootstrap (as kubeadm:cluster-admins)
CONTROL_PLANE_GROUP = "system:bootstrappers:k4s:control-plane"  # a server's join token (k4s.cluster.copycerts)
NODE_ADMINS_GROUP = "k4s:node-admins"  # the node's own admin (its tasks, write-kubeconfig): its own binding


@dataclass(frozen=True)
class Identity:
    """What the certificates must name: derived from the Config and the node's address."""

    node_name: str
    node_ip: str
    kubernetes_service_ip: str
    cluster_domain: str
    extra_sans: tuple[str, ...] = ()


def _split(names: Iterable[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    dns, ips = [], []
    for n in names:
        try:
            ips.append(str(ipaddress.ip_address(n)))
        except ValueError:
            dns.append(n)
    return tuple(dict.fromkeys(dns)), tuple(dict.fromkeys(ips))


def leaves(ident: Identity) -> list[Leaf]:
    api_dns, api_ips = _split([
        ident.node_name, "localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
        f"kubernetes.default.svc.{ident.cluster_domain}",
        ident.node_ip, "127.0.0.1", ident.kubernetes_service_ip, *ident.extra_sans,
    ])
    node_dns, node_ips = _split([ident.node_name, "localhost", ident.node_ip, "127.0.0.1", "::1"])
    both = (SERVER, CLIENT)
    return [
        Leaf(APISERVER, CLUSTER_CA, "kube-apiserver", usages=(SERVER,), dns_names=api_dns, ip_addresses=api_ips),
        Leaf(APISERVER_KUBELET_CLIENT, CLUSTER_CA, "kube-apiserver-kubelet-client"),
        Leaf(APISERVER_ETCD_CLIENT, ETCD_CA, "kube-apiserver-etcd-client"),
        Leaf(ETCD_SERVER, ETCD_CA, ident.node_name, usages=both, dns_names=node_dns, ip_addresses=node_ips),
        Leaf(ETCD_PEER, ETCD_CA, ident.node_name, usages=both, dns_names=node_dns, ip_addresses=node_ips),
        Leaf(FRONT_PROXY_CLIENT, FRONT_PROXY_CA, "front-proxy-client"),
        Leaf(KUBELET_SERVER, KUBELET_SERVING_CA, ident.node_name, usages=(SERVER,), dns_names=node_dns, ip_addresses=node_ips),
        # the node's admin is bound to cluster-admin through a group (as kubeadm's admin.conf since
        # 1.29): deleting the binding withdraws it. system:masters, which no RBAC change can
        # withdraw, is only the super-admin's, used by bootstrap to make that binding.
        Leaf(ADMIN, CLUSTER_CA, "kubernetes-admin", (NODE_ADMINS_GROUP,), kubeconfig=ADMIN),
        Leaf(SUPER_ADMIN, CLUSTER_CA, "kubernetes-super-admin", ("system:masters",)),
        Leaf(CONTROLLER_MANAGER, CLUSTER_CA, "system:kube-controller-manager", kubeconfig=CONTROLLER_MANAGER),
        Leaf(SCHEDULER, CLUSTER_CA, "system:kube-scheduler", kubeconfig=SCHEDULER),
        *(Leaf(name, CLUSTER_CA, cn, usages=(SERVER,), dns_names=("localhost",), ip_addresses=("127.0.0.1",))
          for name, cn in ((CONTROLLER_MANAGER_SERVING, "kube-controller-manager"),
                           (SCHEDULER_SERVING, "kube-scheduler"))),
        Leaf(KUBELET, CLUSTER_CA, f"system:node:{ident.node_name}", ("system:nodes",), kubeconfig=KUBELET),
        Leaf(KUBE_PROXY, CLUSTER_CA, "system:kube-proxy", kubeconfig=KUBE_PROXY),
    ]


@dataclass(frozen=True)
class Files:
    """Every certificate, key and kubeconfig path, by the names above."""

    pki: Path
    kubeconfigs: Path

    def crt(self, name: str | CA) -> Path:
        return self.pki / f"{name.name if isinstance(name, CA) else name}.crt"

    def key(self, name: str | CA) -> Path:
        return self.pki / f"{name.name if isinstance(name, CA) else name}.key"

    def kubeconfig(self, user: str) -> Path:
        return self.kubeconfigs / f"{user}.conf"

    @property
    def sa_key(self) -> Path:
        return self.pki / f"{SERVICE_ACCOUNT}.key"

    @property
    def sa_pub(self) -> Path:
        return self.pki / f"{SERVICE_ACCOUNT}.pub"

    @property
    def encryption_config(self) -> Path:
        return self.pki / ENCRYPTION_CONFIG
