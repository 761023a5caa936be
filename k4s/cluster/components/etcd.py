"""etcd: the datastore; mutual TLS with the etcd CA for its peers and its clients on the network,
a root-only unix socket for the apiserver.

Its clients are the apiserver, through a unix socket in a root-only directory, k4s's probes on
loopback and, on the node network, the other servers' joins (k4s.cluster.etcdmembers); its peers
are the other servers' etcd. A server that joined starts
as a learner with the list its join was answered with, and is promoted by this probe.
"""

from __future__ import annotations

import ipaddress

from k4s import log
from k4s.cluster import certs, etcdmembers, kubeapi
from k4s.cluster.node import Node
from k4s.config import Config

BINARY = "etcd"
HELPERS = ("etcdutl",)  # a server restored from an operator's snapshot (k4s.cluster.etcdsnapshot)
NODE = False
HOST = "kube-apiserver"
READY_TIMEOUT = 120.0  # a member that joins is ready once promoted: caught up with the leader's log
CLIENT_PORT, PEER_PORT, METRICS_PORT = 2379, 2380, 2381
CLIENT_URL = f"https://127.0.0.1:{CLIENT_PORT}"
PEER_URL = f"https://127.0.0.1:{PEER_PORT}"
METRICS_URL = f"http://127.0.0.1:{METRICS_PORT}"
# The apiserver's identity towards etcd: its client certificate, and the CA that signed etcd's.
CLIENT_CERT = certs.APISERVER_ETCD_CLIENT
CA = certs.ETCD_CA


def client_socket(node: Node) -> str:
    """The apiserver's way in: a unix socket, no TLS. The apiserver opens one etcd client per
    resource, each connection a TLS handshake on both sides (ECDSA signatures and verifications
    on the start's critical path, ~60 of them one after another); a socket that only root can
    reach proves what the handshake did on loopback. Its directory is made 0700 here."""
    return f"unix://{node.paths.run / 'etcd' / 'client.sock'}"


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", CLIENT_PORT), ("127.0.0.1", PEER_PORT), ("127.0.0.1", METRICS_PORT)]


# Raft's clock: etcd's defaults (100 ms, 1 s) are for a quiet LAN and idle CPUs; a server
# under emulation, or busy starting the control plane, misses heartbeats at that pace and
# calls needless elections. 10 heartbeats to an election, as etcd's tuning guide advises.
HEARTBEAT_MS, ELECTION_MS = 300, 3000
# A member that is and stays alone (a server without cluster-init, which no server may join:
# tokens.check_leader_elected) sends no heartbeats and loses no election, and its first
# election waits 1 to 10 ticks after etcd fast-forwards a lone member's clock: etcd's own
# defaults make that 0.1-1 s instead of 0.3-3 s of the node's start.
ALONE_HEARTBEAT_MS, ALONE_ELECTION_MS = 100, 1000


def raft_clock(cfg: Config) -> tuple[int, int]:
    """(heartbeat, election timeout) in ms: a control plane of several members, or one alone."""
    return (HEARTBEAT_MS, ELECTION_MS) if cfg.leader_elect else (ALONE_HEARTBEAT_MS, ALONE_ELECTION_MS)


def urls(node: Node) -> tuple[list[str], str, str]:
    """(client URLs it listens on, the client URL it advertises, its peer URL): the node address
    beside loopback, so that other servers reach it; loopback alone on a loopback node."""
    if ipaddress.ip_address(node.node_ip).is_loopback:
        return [CLIENT_URL], CLIENT_URL, PEER_URL
    own = etcdmembers.client_url(node.node_ip)
    return [CLIENT_URL, own], own, etcdmembers.peer_url(node.node_ip)


def command(node: Node) -> list[str]:
    c, name = node.certs, node.cfg.node_name
    data = node.paths.data / "etcd"
    data.mkdir(parents=True, exist_ok=True, mode=0o700)
    listen, advertise, peer = urls(node)
    (node.paths.run / "etcd").mkdir(parents=True, exist_ok=True, mode=0o700)
    joined = etcdmembers.read_record(node.paths.data)
    heartbeat, election = raft_clock(node.cfg)
    return [
        str(node.bin(BINARY)),
        f"--name={name}",
        f"--data-dir={data}",
        f"--listen-client-urls={','.join((*listen, client_socket(node)))}",
        f"--advertise-client-urls={advertise}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        # read only while the data directory is empty: a member that joined starts from the list
        # its join was answered with; a first server founds a cluster of one
        f"--initial-cluster={joined['initial_cluster'] if joined else f'{name}={peer}'}",
        f"--initial-cluster-state={'existing' if joined else 'new'}",
        f"--heartbeat-interval={heartbeat}",
        f"--election-timeout={election}",
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


def client_context(node: Node):  # type: ignore[no-untyped-def]
    c = node.certs
    return kubeapi.tls_context(c.crt(CA), c.crt(CLIENT_CERT), c.key(CLIENT_CERT))


def ready(node: Node) -> bool:
    """/readyz: it serves linearizable reads as a voting member. A learner (a server that joined)
    is promoted from here once it has caught up. A voting member that fails it asks the others
    whether a majority still answers, and the console says when it does not."""
    ctx = client_context(node)
    try:
        status, body = kubeapi.get(f"{CLIENT_URL}/readyz?verbose", ctx, keep=True)
    except OSError:  # a linearizable read that a lost quorum holds up past the timeout
        status, body = 0, b""
    if status == 200:
        QUORUM.observe(CLIENT_URL, ctx, healthy=True)
        return True
    if b"non_learner failed" in body and (record := etcdmembers.read_record(node.paths.data)):
        if etcdmembers.promote(record, ctx):
            log.console(f"k4s: etcd member {node.cfg.node_name} promoted: a voting member now")
        return False
    QUORUM.observe(CLIENT_URL, ctx, healthy=False)
    return False


QUORUM = etcdmembers.Quorum()  # the etcd probe's: says when a majority stops (and starts again) answering
