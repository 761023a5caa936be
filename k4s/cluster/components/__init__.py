"""The upstream components: one module per component owns every fact about it.

Each module defines:
    BINARY         the upstream executable under bin-dir
    HELPERS        other programs under bin-dir it runs (shims, CNI plugins): preflight
                   checks them and mkimage packs them
    NODE           True for the node part (skipped by --control-plane-only)
    HOST           the component whose process it can run in (`component-processes:
                   shared`, build/components/kube/embed.go), or None
    HOST_ELECTED   (optional) its host instead when it elects a leader (config.leader_elect):
                   upstream ends the process when a lease is lost, so an elected
                   component never shares the apiserver's and etcd's
    READY_TIMEOUT  seconds from the start of its process to ready before the boot fails
    ports(cfg)     the (address, port) pairs it listens on: preflight refuses a taken one
    command(node)  writes its config files, returns its argv
    ready(node)    its readiness probe (fast; an exception means not ready)

What each waits for is in the service graph (k4s.cluster.services). A Kubernetes
upgrade touches these modules and the Go build; a new component adds a module
here and a line to the graph.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

from k4s.cluster import certs, kubeapi
from k4s.cluster.node import Node
from k4s.config import attr

MODULES = {
    "etcd": "k4s.cluster.components.etcd",
    "containerd": "k4s.cluster.components.containerd",
    "kube-apiserver": "k4s.cluster.components.apiserver",
    "kube-controller-manager": "k4s.cluster.components.controller_manager",
    "kube-scheduler": "k4s.cluster.components.scheduler",
    "kubelet": "k4s.cluster.components.kubelet",
    "kube-proxy": "k4s.cluster.components.proxy",
    "flannel": "k4s.cluster.components.flannel",
}
NAMES = tuple(MODULES)


def module(name: str) -> ModuleType:
    return importlib.import_module(MODULES[name])


def binaries(names: list[str] | tuple[str, ...] = NAMES) -> list[str]:
    """Every program under bin-dir the named components run, in order, once each."""
    out = [b for n in names for b in (module(n).BINARY, *module(n).HELPERS)]
    return list(dict.fromkeys(out))


def argv(name: str, node: Node) -> list[str]:
    """The component's command line: its module's flags, then the user's `<name>-arg` flags
    (upstream flag parsing lets the last occurrence win)."""
    extra = getattr(node.cfg, attr(f"{name}-arg"), ())
    return [*module(name).command(node), *extra]


EMBED_MARK = "+"  # kube kube-apiserver FLAGS + etcd FLAGS + kube-scheduler FLAGS


def host_of(name: str, node: Node, names: list[str]) -> str | None:
    """The component whose process runs `name`, or None for a process of its own. Shared only
    with `component-processes: shared`, when both run and both are the same executable:
    every Go process of the multicall carries ~14 MB of package-init state and a runtime."""
    host = module(name).HOST
    if node.cfg.leader_elect:
        host = getattr(module(name), "HOST_ELECTED", host)
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


def delegated_auth_flags(node: Node, user: str, serving: str, port: int) -> list[str]:
    """controller-manager and scheduler: one identity for the API and for checking their callers,
    and a serving certificate from the cluster CA."""
    kubeconfig = node.certs.kubeconfig(user)
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={port}",
        f"--tls-cert-file={node.certs.crt(serving)}",
        f"--tls-private-key-file={node.certs.key(serving)}",
        *leader_election_flags(node),
        "--profiling=false",
    ]


def delegated_auth_ready(node: Node, port: int) -> bool:
    """controller-manager and scheduler: /healthz on their port says ok, over TLS with the serving
    certificate from the cluster CA (delegated_auth_flags)."""
    return kubeapi.says_ok(f"https://127.0.0.1:{port}/healthz", kubeapi.tls_context(node.certs.crt(certs.CLUSTER_CA)))


# Twice upstream's 15 s lease, 10 s renew deadline and 2 s retry: a renewal held up by a busy
# apiserver under TCG is not a lost lease, and a leader that is gone is replaced within 30 s.
LEASE_DURATION, RENEW_DEADLINE, RETRY_PERIOD = "30s", "20s", "4s"


def leader_election_flags(node: Node) -> list[str]:
    """On the servers of a control plane of several, one controller-manager and one scheduler
    are active, holding a Lease in kube-system; alone, a server has no one to take turns with
    and writes no lease."""
    if not node.cfg.leader_elect:
        return ["--leader-elect=false"]
    return ["--leader-elect=true", f"--leader-elect-lease-duration={LEASE_DURATION}",
            f"--leader-elect-renew-deadline={RENEW_DEADLINE}", f"--leader-elect-retry-period={RETRY_PERIOD}"]
