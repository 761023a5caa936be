"""The node's facts, filled once from the Config: its address, where its state
and binaries live, its certificates. Components read named fields of this,
never string literals (as k3s's ControlRuntime)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from k4s.cluster import apilb
from k4s.cluster.certs import Files
from k4s.config import Config
from k4s.layout import Paths


@dataclass(frozen=True)
class Node:
    cfg: Config
    paths: Paths
    node_ip: str
    interface: str
    bin_dir: Path

    @classmethod
    def of(cls, cfg: Config) -> Node:
        from k4s.cluster.netinfo import node_address

        iface, ip = node_address(cfg.node_ip, cfg.interface)
        return cls(cfg, Paths.of(cfg.data_dir, cfg.run_dir), ip, iface, Path(cfg.bin_dir))

    @property
    def certs(self) -> Files:
        return Files(self.paths.pki, self.paths.kubeconfigs)

    def bin(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def pod_subnet(self) -> str:
        """This node's pod /24: the first of cluster-cidr, which the controller-manager also assigns."""
        return str(next(ipaddress.IPv4Network(self.cfg.cluster_cidr).subnets(new_prefix=24)))

    @property
    def apiserver_url(self) -> str:
        """How the node's own clients reach the apiserver: a server's own; an agent's load balancer,
        which passes them to the server it joined or another (k4s.cluster.apilb)."""
        return apilb.URL if self.cfg.role == "agent" else f"https://127.0.0.1:{self.cfg.apiserver_port}"

    @property
    def containerd_socket(self) -> Path:
        return self.paths.run / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.paths.data / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        """host-local's address leases: this boot's pods only, so in run-dir (on a data disk
        they would outlive the pods and leak the /24 away reboot by reboot)."""
        return self.paths.run / "cni" / "ipam"
