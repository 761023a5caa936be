"""kube-apiserver: secure by default (no anonymous auth, Node+RBAC, Secrets encrypted at rest with secretbox)."""

from __future__ import annotations

import base64
import ipaddress
import os

import yaml

from k4s import events, log
from k4s.cluster import certs, kubeapi
from k4s.cluster.components import etcd
from k4s.cluster.node import Node
from k4s.config import Config
from k4s.fsutil import write_atomic

BINARY = "kube-apiserver"
HELPERS: tuple[str, ...] = ()
NODE = False
HOST = None
READY_TIMEOUT = 180.0


def ports(cfg: Config) -> list[tuple[str, int]]:
    return [("0.0.0.0", cfg.apiserver_port)]


def encryption_config(node: Node) -> str:
    """Secrets at rest: secretbox (XSalsa20-Poly1305), upstream's recommended local provider,
    with a 32-byte key the node makes; kept with the PKI, never in the image. A config from
    an older k4s (aescbc) gets a new secretbox key first and keeps its old key for reading."""
    path = node.certs.encryption_config
    try:
        old = yaml.safe_load(path.read_text()) if path.exists() else None
    except (OSError, yaml.YAMLError):
        old = None
    providers = old["resources"][0]["providers"] if isinstance(old, dict) and old.get("resources") else []
    if not any("secretbox" in p for p in providers):
        key = {"name": f"k4s-{len(providers) + 1}", "secret": base64.b64encode(os.urandom(32)).decode()}
        keep = [p for p in providers if "identity" not in p]
        doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "EncryptionConfiguration",
               "resources": [{"resources": ["secrets"],
                              "providers": [{"secretbox": {"keys": [key]}}, *keep, {"identity": {}}]}]}
        write_atomic(path, yaml.safe_dump(doc, sort_keys=False), 0o600)
    return str(path)


CLUSTER_INFO_PATH = "/api/v1/namespaces/kube-public/configmaps/cluster-info"


def authentication_config(node: Node) -> str:
    """Anonymous requests are refused except for one: reading the `cluster-info` ConfigMap,
    kubeadm's discovery document (the CA and the server; public, checked by the client
    against the CA hash it pinned). RBAC grants system:anonymous that one object only."""
    path = node.paths.data / "kube-apiserver" / "authentication-config.yaml"
    doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AuthenticationConfiguration",
           "anonymous": {"enabled": True, "conditions": [{"path": CLUSTER_INFO_PATH}]}}
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# Pod Security: every namespace is held to `baseline` (no privileged pods, host namespaces,
# host paths or added capabilities beyond the default set) unless it says why not with the
# pod-security.kubernetes.io/enforce label; `restricted` is warned about and audited.
# kube-system runs the cluster's own pods and is exempt.
POD_SECURITY = {"enforce": "baseline", "enforce-version": "latest", "audit": "restricted",
                "audit-version": "latest", "warn": "restricted", "warn-version": "latest"}
POD_SECURITY_EXEMPT = ("kube-system",)


def admission_config(node: Node) -> str:
    path = node.paths.data / "kube-apiserver" / "admission-config.yaml"
    doc = {"apiVersion": "apiserver.config.k8s.io/v1", "kind": "AdmissionConfiguration",
           "plugins": [{"name": "PodSecurity", "configuration": {
               "apiVersion": "pod-security.admission.config.k8s.io/v1", "kind": "PodSecurityConfiguration",
               "defaults": POD_SECURITY,
               "exemptions": {"usernames": [], "runtimeClasses": [], "namespaces": list(POD_SECURITY_EXEMPT)}}}]}
    write_atomic(path, yaml.safe_dump(doc, sort_keys=False))
    return str(path)


# The watch cache keeps every object of a resource in the apiserver's memory, with a
# reflector and a ring of events each, so that many watchers share one etcd watch: what a
# fleet's kubelets and kube-proxies need for pods, nodes, services, endpoints, secrets and
# config maps. These resources have one watcher (a controller) or none, so they are served
# from etcd directly (size 0 turns the cache off for one resource; the rest keep it).
UNCACHED = ("controllerrevisions.apps", "cronjobs.batch", "poddisruptionbudgets.policy",
            "horizontalpodautoscalers.autoscaling", "resourcequotas", "limitranges", "podtemplates",
            "replicationcontrollers", "priorityclasses.scheduling.k8s.io", "ingresses.networking.k8s.io",
            "ingressclasses.networking.k8s.io", "networkpolicies.networking.k8s.io",
            "certificatesigningrequests.certificates.k8s.io", "leases.coordination.k8s.io",
            "mutatingwebhookconfigurations.admissionregistration.k8s.io",
            "validatingwebhookconfigurations.admissionregistration.k8s.io",
            "validatingadmissionpolicies.admissionregistration.k8s.io",
            "validatingadmissionpolicybindings.admissionregistration.k8s.io",
            "volumeattachments.storage.k8s.io", "csistoragecapacities.storage.k8s.io",
            "flowschemas.flowcontrol.apiserver.k8s.io", "prioritylevelconfigurations.flowcontrol.apiserver.k8s.io")


def command(node: Node) -> list[str]:
    c, cfg = node.certs, node.cfg
    return [
        str(node.bin(BINARY)),
        f"--advertise-address={node.node_ip}",
        "--bind-address=0.0.0.0",
        f"--secure-port={cfg.apiserver_port}",
        f"--etcd-servers={etcd.client_socket(node)}",  # the local member; no TLS on a root-only socket
        f"--client-ca-file={c.crt(certs.CLIENT_CA_BUNDLE)}",  # the cluster CA, and the operator's
        f"--tls-cert-file={c.crt(certs.APISERVER)}",
        f"--tls-private-key-file={c.key(certs.APISERVER)}",
        f"--kubelet-client-certificate={c.crt(certs.APISERVER_KUBELET_CLIENT)}",
        f"--kubelet-client-key={c.key(certs.APISERVER_KUBELET_CLIENT)}",
        f"--kubelet-certificate-authority={c.crt(certs.KUBELET_SERVING_CA)}",
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--authentication-config={authentication_config(node)}",
        "--authorization-mode=Node,RBAC",
        "--enable-bootstrap-token-auth=true",  # workers join with a token (k4s.cluster.join)
        "--enable-admission-plugins=NodeRestriction",
        f"--admission-control-config-file={admission_config(node)}",
        "--allow-privileged=true",
        f"--service-cluster-ip-range={cfg.service_cidr}",
        f"--service-account-issuer=https://kubernetes.default.svc.{cfg.cluster_domain}",
        f"--service-account-key-file={c.sa_pub}",
        f"--service-account-signing-key-file={c.sa_key}",
        f"--proxy-client-cert-file={c.crt(certs.FRONT_PROXY_CLIENT)}",
        f"--proxy-client-key-file={c.key(certs.FRONT_PROXY_CLIENT)}",
        f"--requestheader-client-ca-file={c.crt(certs.FRONT_PROXY_CA)}",
        "--requestheader-allowed-names=front-proxy-client",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-username-headers=X-Remote-User",
        f"--encryption-provider-config={encryption_config(node)}",
        "--profiling=false",
        "--enable-priority-and-fairness=false",  # one node, few clients: save the work
        "--watch-cache-sizes=" + ",".join(f"{r}#0" for r in UNCACHED),
        *loopback_flags(node.node_ip),
    ]


def loopback_flags(node_ip: str) -> list[str]:
    """A control plane on a loopback address (`k4s server --set node-ip=127.0.0.1`, the host's
    own tests): no pod could reach it there, so the `kubernetes` Service gets no endpoints
    rather than a loopback one, which the apiserver refuses to publish."""
    return ["--endpoint-reconciler-type=none"] if ipaddress.ip_address(node_ip).is_loopback else []


_pending: list[str] = []  # the /readyz checks that failed at the last probe, as recorded


def ready(node: Node) -> bool:
    """/readyz; while it fails, each change in the set of checks still failing is an event (the
    apiserver's start, step by step: its post-start hooks, etcd, informers)."""
    c = node.certs
    ctx = kubeapi.tls_context(c.crt(certs.CLUSTER_CA), c.crt(certs.ADMIN), c.key(certs.ADMIN))
    status, body = kubeapi.get(f"{node.apiserver_url}/readyz?verbose", ctx, keep=True)
    if status == 200:
        return True
    pending = sorted(ln[3:].split(" ", 1)[0] for ln in body.decode(errors="replace").splitlines()
                     if ln.startswith("[-]"))
    if pending != _pending:
        _pending[:] = pending
        log.record(*events.APISERVER_READYZ, pending=",".join(pending))
    return False
