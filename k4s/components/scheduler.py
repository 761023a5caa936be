"""kube-scheduler."""

from __future__ import annotations

from k4s import kubeapi
from k4s.components import Node, delegated_auth_flags

NAME = "kube-scheduler"
BINARY = "kube-scheduler"
AFTER = ("kube-apiserver",)
NODE = False
PORT = 10259


def command(node: Node) -> list[str]:
    return [str(node.bin(BINARY)), *delegated_auth_flags(node.paths.kubeconfig("scheduler"), PORT)]


def ready(node: Node) -> bool:
    return kubeapi.says_ok(f"https://127.0.0.1:{PORT}/healthz", kubeapi.tls_context())
