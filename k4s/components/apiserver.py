"""kube-apiserver: secure by default (no anonymous auth, Node+RBAC, Secrets encrypted at rest)."""

from __future__ import annotations

import base64
import os

from k4s import kubeapi
from k4s.components import Node
from k4s.fsutil import write_atomic

NAME = "kube-apiserver"
BINARY = "kube-apiserver"
AFTER = ("etcd",)
NODE = False


def encryption_config(node: Node) -> str:
    """Secrets at rest: AES-CBC with a key made once and kept with the PKI."""
    path = node.pki / "encryption-config.yaml"
    if not path.exists():
        key = base64.b64encode(os.urandom(32)).decode()
        write_atomic(path, f"""apiVersion: apiserver.config.k8s.io/v1
kind: EncryptionConfiguration
resources:
  - resources: [secrets]
    providers:
      - aescbc:
          keys:
            - name: k4s-1
              secret: {key}
      - identity: {{}}
""", 0o600)
    return str(path)


def command(node: Node) -> list[str]:
    pki, cfg = node.pki, node.cfg
    return [
        str(node.bin(BINARY)),
        f"--advertise-address={node.node_ip}",
        "--bind-address=0.0.0.0",
        f"--secure-port={cfg.apiserver_port}",
        "--etcd-servers=https://127.0.0.1:2379",
        f"--etcd-cafile={pki / 'etcd/ca.crt'}",
        f"--etcd-certfile={pki / 'apiserver-etcd-client.crt'}",
        f"--etcd-keyfile={pki / 'apiserver-etcd-client.key'}",
        f"--client-ca-file={pki / 'ca.crt'}",
        f"--tls-cert-file={pki / 'apiserver.crt'}",
        f"--tls-private-key-file={pki / 'apiserver.key'}",
        f"--kubelet-client-certificate={pki / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        "--anonymous-auth=false",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction",
        "--allow-privileged=true",
        f"--service-cluster-ip-range={cfg.service_cidr}",
        f"--service-account-issuer=https://kubernetes.default.svc.{cfg.cluster_domain}",
        f"--service-account-key-file={pki / 'sa.pub'}",
        f"--service-account-signing-key-file={pki / 'sa.key'}",
        f"--proxy-client-cert-file={pki / 'front-proxy-client.crt'}",
        f"--proxy-client-key-file={pki / 'front-proxy-client.key'}",
        f"--requestheader-client-ca-file={pki / 'front-proxy-ca.crt'}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--encryption-provider-config={encryption_config(node)}",
        "--profiling=false",
        "--enable-priority-and-fairness=false",  # one node, few clients: save the work
    ]


def ready(node: Node) -> bool:
    pki = node.pki
    ctx = kubeapi.tls_context(pki / "ca.crt", pki / "admin.crt", pki / "admin.key")
    return kubeapi.says_ok(f"https://127.0.0.1:{node.cfg.apiserver_port}/readyz", ctx)
