"""kube-controller-manager: signs node CSRs, allocates the pod CIDR, runs the controllers."""

from __future__ import annotations

from k4s import kubeapi
from k4s.components import Node

NAME = "kube-controller-manager"
BINARY = "kube-controller-manager"
AFTER = ("kube-apiserver",)
NODE = False
PORT = 10257


def command(node: Node) -> list[str]:
    pki, cfg = node.pki, node.cfg
    kubeconfig = node.paths.kubeconfig("controller-manager")
    return [
        str(node.bin(BINARY)),
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
        "--bind-address=127.0.0.1",
        f"--secure-port={PORT}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        f"--cluster-signing-cert-file={pki / 'ca.crt'}",
        f"--cluster-signing-key-file={pki / 'ca.key'}",
        f"--root-ca-file={pki / 'ca.crt'}",
        f"--service-account-private-key-file={pki / 'sa.key'}",
        "--use-service-account-credentials=true",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={cfg.cluster_cidr}",
        "--node-cidr-mask-size=24",
        f"--service-cluster-ip-range={cfg.service_cidr}",
        "--leader-elect=false",  # one node: no lease traffic
        "--profiling=false",
    ]


def ready(node: Node) -> bool:
    status, body = kubeapi.get(f"https://127.0.0.1:{PORT}/healthz", kubeapi.tls_context())
    return status == 200 and body.strip() == b"ok"
