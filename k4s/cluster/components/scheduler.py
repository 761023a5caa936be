"""kube-scheduler."""

from __future__ import annotations

from k4s.cluster import certs
from k4s.cluster.components import delegated_auth_flags, delegated_auth_ready
from k4s.cluster.node import Node
from k4s.config import Config

BINARY = "kube-scheduler"
HELPERS: tuple[str, ...] = ()
NODE = False
HOST = "kube-apiserver"
HOST_ELECTED = "kube-controller-manager"
READY_TIMEOUT = 120.0
PORT = 10259


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", PORT)]


def command(node: Node) -> list[str]:
    return [str(node.bin(BINARY)), *delegated_auth_flags(node, certs.SCHEDULER, certs.SCHEDULER_SERVING, PORT)]


def ready(node: Node) -> bool:
    return delegated_auth_ready(node, PORT)
