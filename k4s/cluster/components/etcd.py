"""etcd: the datastore, on loopback only, mutual TLS with the etcd CA."""

from __future__ import annotations

import json

from k4s.cluster import certs, kubeapi
from k4s.cluster.node import Node
from k4s.config import Config

BINARY = "etcd"
HELPERS: tuple[str, ...] = ()
NODE = False
HOST = "kube-apiserver"
READY_TIMEOUT = 60.0
CLIENT_PORT, PEER_PORT, METRICS_PORT = 2379, 2380, 2381
CLIENT_URL = f"https://127.0.0.1:{CLIENT_PORT}"
PEER_URL = f"https://127.0.0.1:{PEER_PORT}"
METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}"
# The apiserver's identity towards etcd: its client certificate, and the CA that signed etcd's.
CLIENT_CERT = certs.APISERVER_ETCD_CLIENT
CA = certs.ETCD_CA


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", CLIENT_PORT), ("127.0.0.1", PEER_PORT), ("127.0.0.1", METRICS_PORT)]


def command(node: Node) -> list[str]:
    c, name = node.certs, node.cfg.node_name
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
        f"--cert-file={c.crt(certs.ETCD_SERVER)}",
        f"--key-file={c.key(certs.ETCD_SERVER)}",
        f"--trusted-ca-file={c.crt(CA)}",
        "--client-cert-auth=true",
        f"--peer-cert-file={c.crt(certs.ETCD_PEER)}",
        f"--peer-key-file={c.key(certs.ETCD_PEER)}",
        f"--peer-trusted-ca-file={c.crt(CA)}",
        "--peer-client-cert-auth=true",
        "--snapshot-count=10000",
        "--quota-backend-bytes=536870912",  # 512 MiB: the data lives in RAM
        "--log-level=warn",
    ]


def ready(node: Node) -> bool:
    c = node.certs
    ctx = kubeapi.tls_context(c.crt(CA), c.crt(CLIENT_CERT), c.key(CLIENT_CERT))
    status, body = kubeapi.get(f"{CLIENT_URL}/health", ctx)
    return status == 200 and json.loads(body).get("health") == "true"
