"""kube-controller-manager: signs node CSRs, allocates the pod CIDR, runs the controllers."""

from __future__ import annotations

from k4s import kubeapi
from k4s.components import Node, delegated_auth_flags

NAME = "kube-controller-manager"
BINARY = "kube-controller-manager"
AFTER = ("kube-apiserver",)
NODE = False
PORT = 10257


def command(node: Node) -> list[str]:
    pki, cfg = node.pki, node.cfg
    return [
        str(node.bin(BINARY)),
        *delegated_auth_flags(node.paths.kubeconfig("controller-manager"), PORT),
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
    ]


def ready(node: Node) -> bool:
    return kubeapi.says_ok(f"https://127.0.0.1:{PORT}/healthz", kubeapi.tls_context())
