"""kube-controller-manager: signs node CSRs, allocates the pod CIDR, runs the controllers."""

from __future__ import annotations

from k4s.cluster import certs
from k4s.cluster.components import delegated_auth_flags, delegated_auth_ready
from k4s.cluster.node import Node
from k4s.config import Config

BINARY = "kube-controller-manager"
HELPERS: tuple[str, ...] = ()
NODE = False
HOST = "kube-apiserver"
HOST_ELECTED: str | None = None  # elected: a process of its own, which hosts the scheduler
READY_TIMEOUT = 120.0
PORT = 10257


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("127.0.0.1", PORT)]


def command(node: Node) -> list[str]:
    c, cfg = node.certs, node.cfg
    return [
        str(node.bin(BINARY)),
        *delegated_auth_flags(node, certs.CONTROLLER_MANAGER, certs.CONTROLLER_MANAGER_SERVING, PORT),
        f"--client-ca-file={c.crt(certs.CLUSTER_CA)}",
        f"--requestheader-client-ca-file={c.crt(certs.FRONT_PROXY_CA)}",
        # one CA per signer: kubelet-serving certificates from their own CA, which only the
        # apiserver trusts (for kubelets); client certificates from the cluster CA; nothing
        # for legacy-unknown. Signed for at most cert-validity.
        *(f"--cluster-signing-{signer}-{part}-file={path(ca)}"
          for signer, ca in (("kubelet-serving", certs.KUBELET_SERVING_CA), ("kubelet-client", certs.CLUSTER_CA),
                             ("kube-apiserver-client", certs.CLUSTER_CA))
          for part, path in (("cert", c.crt), ("key", c.key))),
        f"--cluster-signing-duration={cfg.cert_validity}s",
        f"--root-ca-file={c.crt(certs.CLUSTER_CA)}",
        f"--service-account-private-key-file={c.sa_key}",
        "--use-service-account-credentials=true",
        # bootstrapsigner signs cluster-info for each token; tokencleaner deletes expired ones.
        # Not the ValidatingAdmissionPolicy status controller: it only type-checks policies
        # for a warning in their status (the apiserver enforces them either way), and it holds
        # its own copy of every built-in type's OpenAPI schema: 4.5 MB of live heap (pprof).
        "--controllers=*,bootstrapsigner,tokencleaner,-validatingadmissionpolicy-status-controller",
        "--allocate-node-cidrs=true",
        f"--cluster-cidr={cfg.cluster_cidr}",
        f"--node-cidr-mask-size={NODE_CIDR_PREFIX}",
        f"--service-cluster-ip-range={cfg.service_cidr}",
    ]


NODE_CIDR_PREFIX = 24  # each node's podCIDR: a /24 of cluster-cidr (the server gives its own: tasks.own_node)


def ready(node: Node) -> bool:
    return delegated_auth_ready(node, PORT)
