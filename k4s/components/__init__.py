"""The upstream components: one module per component knows its flags and config files.

Each module defines:
    NAME      the component (and applet) name, e.g. "kubelet"
    BINARY    the upstream executable under the bin dir
    AFTER     components that must be ready before it starts
    NODE      True for the node part (skipped by --control-plane-only)
    command(node) -> list[str]   writes its config files, returns the argv
    ready(node) -> bool          its readiness probe (fast; errors mean not ready)

A Kubernetes upgrade touches these files and nothing else.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from k4s.config import Config, attr
from k4s.paths import Paths

# Start order; AFTER in each module says what really must be ready first.
ORDER = ("etcd", "containerd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubelet", "kube-proxy")
_MODULES = {
    "etcd": "k4s.components.etcd",
    "containerd": "k4s.components.containerd",
    "kube-apiserver": "k4s.components.apiserver",
    "kube-controller-manager": "k4s.components.controller_manager",
    "kube-scheduler": "k4s.components.scheduler",
    "kubelet": "k4s.components.kubelet",
    "kube-proxy": "k4s.components.proxy",
}


def module(name: str) -> ModuleType:
    return importlib.import_module(_MODULES[name])


@dataclass(frozen=True)
class Node:
    """Everything a component needs to build its command line."""

    cfg: Config
    paths: Paths
    node_ip: str
    interface: str
    bin_dir: Path

    @property
    def pki(self) -> Path:
        return self.paths.pki

    def bin(self, name: str) -> Path:
        return self.bin_dir / name

    @property
    def pod_subnet(self) -> str:
        """This node's pod /24: the first of cluster-cidr, which the controller-manager also assigns."""
        import ipaddress

        return str(next(ipaddress.IPv4Network(self.cfg.cluster_cidr).subnets(new_prefix=24)))

    @property
    def containerd_socket(self) -> Path:
        return self.paths.run / "containerd" / "containerd.sock"

    @property
    def cni_conf_dir(self) -> Path:
        return self.paths.data / "cni" / "net.d"


SETTLE_AFTER = "60s"  # start-up, as far as the garbage collector is concerned


def argv(name: str, node: Node) -> list[str]:
    """The component's command line: its module's flags, then the user's `<name>-arg` flags
    (upstream flag parsing lets the last occurrence win)."""
    extra = getattr(node.cfg, attr(f"{name}-arg"), ())
    return [*module(name).command(node), *extra]


# Components that can run inside another one's process, and whose: the kube
# multicall runs `kube-apiserver FLAGS + etcd FLAGS + kube-scheduler FLAGS` as
# one process (build/components/kube/embed.go), sharing ~14 MB of package-init
# state and a Go runtime per component, as k3s does.
HOSTS = {"etcd": "kube-apiserver", "kube-controller-manager": "kube-apiserver", "kube-scheduler": "kube-apiserver",
         "kube-proxy": "kubelet"}
EMBED_MARK = "+"


def host_of(name: str, node: Node, names: list[str]) -> str | None:
    """The component whose process runs `name`, or None for a process of its own. Shared only
    with `component-processes: shared`, when both run and both are the same executable."""
    host = HOSTS.get(name)
    if host is None or host not in names or node.cfg.component_processes != "shared":
        return None
    exe = [os.path.realpath(node.bin(module(n).BINARY)) for n in (host, name)]
    return host if exe[0] == exe[1] else None


def group_argv(host: str, members: list[str], node: Node) -> list[str]:
    """The host's command line with each member's flags after a "+" and its name."""
    out = argv(host, node)
    for m in members:
        out += [EMBED_MARK, m, *argv(m, node)[1:]]
    return out


def child_env(bin_dir: Path | str, gogc: int = 100) -> dict[str, str]:
    """The environment every upstream binary gets: explicit, never the bundle's LD_LIBRARY_PATH.

    A GOGC below Go's default applies once a component has started (SETTLE_AFTER):
    start-up makes a lot of short-lived garbage, and a low GOGC there costs many
    collections. Our multicall mains (kube, containerd) read K4S_SETTLED_GOGC."""
    env = {
        "GOGC": str(max(gogc, 100)),
        "PATH": f"{bin_dir}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOME": os.environ.get("HOME", "/root"),
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
    }
    if gogc < 100:
        env |= {"K4S_SETTLED_GOGC": str(gogc), "K4S_SETTLE_AFTER": SETTLE_AFTER}
    return env


def delegated_auth_flags(kubeconfig: Path, port: int) -> list[str]:
    """controller-manager and scheduler: one identity for the API and for checking their callers."""
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        "--leader-elect=false",  # one node: no lease traffic
        "--profiling=false",
    ]
