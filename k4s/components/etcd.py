"""etcd: the datastore, on loopback only, mutual TLS with the etcd CA."""

from __future__ import annotations

import json

from k4s import kubeapi
from k4s.components import Node

NAME = "etcd"
BINARY = "etcd"
AFTER: tuple[str, ...] = ()
NODE = False
CLIENT_URL = "https://127.0.0.1:2379"
PEER_URL = "https://127.0.0.1:2380"
METRICS_URL = "http://127.0.0.1:2381"


def command(node: Node) -> list[str]:
    pki, name = node.pki, node.cfg.node_name
    data = node.paths.data / "etcd"
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    return [
        str(node.bin(BINARY)),
        f"--name={name}",
        f"--data-dir={data}",
        f"--listen-client-urls={CLIENT_URL}",
        f"--advertise-client-urls={CLIENT_URL}",
        f"--listen-peer-urls={PEER_URL}",
        f"--initial-advertise-peer-urls={PEER_URL}",
        f"--initial-cluster={name}={PEER_URL}",
        "--initial-cluster-state=new",
        f"--listen-metrics-urls={METRICS_URL}",
        f"--cert-file={pki / 'etcd/server.crt'}",
        f"--key-file={pki / 'etcd/server.key'}",
        f"--trusted-ca-file={pki / 'etcd/ca.crt'}",
        "--client-cert-auth=true",
        f"--peer-cert-file={pki / 'etcd/peer.crt'}",
        f"--peer-key-file={pki / 'etcd/peer.key'}",
        f"--peer-trusted-ca-file={pki / 'etcd/ca.crt'}",
        "--peer-client-cert-auth=true",
        "--snapshot-count=10000",
        "--quota-backend-bytes=536870912",  # 512 MiB: the data lives in RAM
        "--log-level=warn",
    ]


def ready(node: Node) -> bool:
    pki = node.pki
    ctx = kubeapi.tls_context(pki / "etcd/ca.crt", pki / "apiserver-etcd-client.crt", pki / "apiserver-etcd-client.key")
    status, body = kubeapi.get(f"{CLIENT_URL}/health", ctx)
    return status == 200 and json.loads(body).get("health") == "true"
