"""kube-scheduler."""

from __future__ import annotations

from k4s import kubeapi
from k4s.components import Node

NAME = "kube-scheduler"
BINARY = "kube-scheduler"
AFTER = ("kube-apiserver",)
NODE = False
PORT = 10259


def command(node: Node) -> list[str]:
    kubeconfig = node.paths.kubeconfig("scheduler")
    return [
        str(node.bin(BINARY)),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={PORT}",
        "--leader-elect=false",
        "--profiling=false",
    ]


def ready(node: Node) -> bool:
    status, body = kubeapi.get(f"https://127.0.0.1:{PORT}/healthz", kubeapi.tls_context())
    return status == 200 and body.strip() == b"ok"
