"""The objects k4s applies at bootstrap: the RBAC the node needs, the operators'
binding, kubeadm's `cluster-info` discovery document, CoreDNS, and rancher's
local-path-provisioner with the default StorageClass.

Built as data from the Config, applied with server-side apply (k4s.kubeapi).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k4s.cluster.certs import NODE_ADMINS_GROUP, OPERATORS_GROUP
from k4s.config import Config
from k4s.image import oci

Obj = dict[str, Any]
LABELS = {"app.kubernetes.io/managed-by": "k4s"}
NODE_BIN = "/k4s-node-bin"  # where pods that run a node program see its directory
COREDNS = "coredns"  # the node's program CoreDNS runs (under bin-dir)
LOCAL_PATH = "local-path-provisioner"  # the node's program the default StorageClass runs
BINARIES = (COREDNS, LOCAL_PATH)  # what the addons need under bin-dir: mkimage packs them


RBAC = "rbac.authorization.k8s.io"
OPERATORS_BINDING = "k4s:cluster-admins"
NODE_ADMINS_BINDING = "k4s:node-admins"
PROXIER_BINDING = "k4s:node-proxier"  # kube-proxy's rights, bound to system:nodes
FLANNEL_RBAC = "k4s:flannel"  # flannel's role and its binding to system:nodes


def rbac() -> list[Obj]:
    """The apiserver reaches kubelets (logs, exec, metrics) as kube-apiserver-kubelet-client;
    the operators (certificates from the operator CA, in OPERATORS_GROUP) are cluster-admin
    through a binding, so their access is withdrawn by deleting it (as kubeadm:cluster-admins);
    the node's own admin likewise, through a binding of its own (never system:masters)."""
    return [_binding(NODE_ADMINS_BINDING, "cluster-admin", NODE_ADMINS_GROUP), {
        "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": "k4s:apiserver-kubelet-api-admin", "labels": LABELS},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "system:kubelet-api-admin"},
        "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "kube-apiserver-kubelet-client"}],
    }, {
        "apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
        "metadata": {"name": OPERATORS_BINDING, "labels": LABELS},
        "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": OPERATORS_GROUP}],
    }]


BOOTSTRAPPERS = "system:bootstrappers"  # every bootstrap token's group
NODES = "system:nodes"
# what a node's own daemons (flannel) read and write beside the kubelet
FLANNEL_RULES = [
    {"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "list", "watch"]},
    {"apiGroups": [""], "resources": ["nodes/status"], "verbs": ["patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
]


def _binding(name: str, role: str, group: str) -> Obj:
    return {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding", "metadata": {"name": name, "labels": LABELS},
            "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": role},
            "subjects": [{"apiGroup": RBAC, "kind": "Group", "name": group}]}


# Objects an earlier k4s applied that this one deletes at bootstrap: the blanket auto-approval of
# every bootstrap token's node-client CSR (k4s.cluster.approver decides those now, by name).
REMOVED = [f"/apis/{RBAC}/v1/clusterrolebindings/k4s:node-autoapprove-bootstrap"]


def join_rbac() -> list[Obj]:
    """kubeadm's bootstrap RBAC, less its blanket approval: a bootstrap token may create CSRs
    (and nothing else), which k4s.cluster.approver decides; a node may have its renewal approved.
    The node's daemons run as the node (NodeRestriction still holds them to their own Node):
    kube-proxy's role and flannel's, bound to system:nodes."""
    return [
        _binding("k4s:kubelet-bootstrap", "system:node-bootstrapper", BOOTSTRAPPERS),
        _binding("k4s:node-autoapprove-certificate-rotation",
                 "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient", NODES),
        _binding(PROXIER_BINDING, "system:node-proxier", NODES),
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole", "metadata": {"name": FLANNEL_RBAC, "labels": LABELS},
         "rules": FLANNEL_RULES},
        _binding(FLANNEL_RBAC, FLANNEL_RBAC, NODES),
    ]


def cluster_info(server: str, ca_pem: bytes) -> list[Obj]:
    """kubeadm's discovery document in kube-public, readable anonymously (and nothing else is):
    the CA a client checks against the hash it pinned, and the server to reach."""
    import base64

    import yaml

    kubeconfig = {"apiVersion": "v1", "kind": "Config", "preferences": {},
                  "clusters": [{"name": "", "cluster": {"server": server,
                                                        "certificate-authority-data": base64.b64encode(ca_pem).decode()}}],
                  "contexts": None, "current-context": "", "users": None}
    ns, name = "kube-public", "cluster-info"
    role = "k4s:bootstrap-signer-clusterinfo"
    return [
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns, "labels": LABELS},
         "data": {"kubeconfig": yaml.safe_dump(kubeconfig, sort_keys=False)}},
        {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": {"name": role, "namespace": ns, "labels": LABELS},
         "rules": [{"apiGroups": [""], "resources": ["configmaps"], "resourceNames": [name], "verbs": ["get"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": {"name": role, "namespace": ns, "labels": LABELS},
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": role},
         "subjects": [{"apiGroup": RBAC, "kind": "User", "name": "system:anonymous"}]},
    ]


KUBELET_SERVING_CA_PATH = "/api/v1/namespaces/kube-system/configmaps/k4s-kubelet-serving-ca"


def kubelet_serving_ca(ca_pem: bytes) -> list[Obj]:
    """The kubelet-serving CA's certificate, for clients that reach a node's own endpoints (`k4s
    status --remote`): read through the apiserver, so it is as trusted as the cluster CA, and
    readable by the cluster's admins only (kube-system)."""
    name = KUBELET_SERVING_CA_PATH.rsplit("/", 1)[1]
    return [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "kube-system",
                                                                  "labels": LABELS},
             "data": {"ca.crt": ca_pem.decode()}}]


def read_cluster_info(kubeconfig: str) -> tuple[str, bytes]:
    """cluster_info's kubeconfig read back: (server, CA PEM). ValueError when it is not one."""
    import base64

    import yaml

    try:
        cluster = yaml.safe_load(kubeconfig)["clusters"][0]["cluster"]
        return str(cluster["server"]), base64.b64decode(cluster["certificate-authority-data"], validate=True)
    except (yaml.YAMLError, KeyError, IndexError, TypeError, ValueError) as e:
        raise ValueError(f"not a cluster-info kubeconfig: {e}") from None


def corefile(cfg: Config) -> str:
    return f""".:53 {{
    errors
    health {{
        lameduck 5s
    }}
    ready
    kubernetes {cfg.cluster_domain} in-addr.arpa ip6.arpa {{
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
        ttl 30
    }}
    prometheus :9153
    forward . /etc/resolv.conf {{
        max_concurrent 1000
    }}
    cache 30
    loop
    reload
    loadbalance
}}
"""


def node_program(binary: Path, name: str) -> tuple[list[str], Obj, Obj]:
    """How a pod runs one of the node's own programs, from an empty image: its command (a
    multicall named by argv[1] when it is not called by that name), and the read-only
    volumeMount and hostPath volume of its directory."""
    command = [f"{NODE_BIN}/{binary.name}", *([] if binary.name == name else [name])]
    return (command, {"name": "node-bin", "mountPath": NODE_BIN, "readOnly": True},
            {"name": "node-bin", "hostPath": {"path": str(binary.parent), "type": "Directory"}})


def coredns(cfg: Config, binary: Path) -> list[Obj]:
    """CoreDNS as upstream deploys it, except where its program comes from: the node's own
    coredns (the kube multicall, or a separate binary), mounted read-only into an empty image.
    On a RAM-only node an image's layers are unpacked into RAM; this way CoreDNS costs nothing
    beyond its heap, and there is no 50 MB layer to import at boot."""
    ns, name = "kube-system", "coredns"
    command, bin_mount, bin_volume = node_program(binary, COREDNS)
    labels = {"k8s-app": "kube-dns", **LABELS}
    meta = {"name": name, "namespace": ns, "labels": labels}
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": meta},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
         "metadata": {"name": "system:coredns", "labels": labels},
         "rules": [
             {"apiGroups": [""], "resources": ["endpoints", "services", "pods", "namespaces"], "verbs": ["list", "watch"]},
             {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
         ]},
        {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "system:coredns", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "system:coredns"},
         "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"Corefile": corefile(cfg)}},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"k8s-app": "kube-dns"}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": name,
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": "coredns",
                        "image": oci.SCRATCH,
                        "imagePullPolicy": "Never",  # airgap: the image is imported at boot
                        "command": command,
                        "args": ["-conf", "/etc/coredns/Corefile"],
                        # the node's garbage-collector setting (component-gogc) for its own program too
                        "env": [{"name": "GOGC", "value": str(cfg.component_gogc)}],
                        "resources": {"limits": {"memory": "100Mi"}, "requests": {"cpu": "50m", "memory": "40Mi"}},
                        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/coredns", "readOnly": True},
                                         bin_mount],
                        "ports": [{"containerPort": 53, "name": "dns", "protocol": "UDP"},
                                  {"containerPort": 53, "name": "dns-tcp", "protocol": "TCP"},
                                  {"containerPort": 9153, "name": "metrics", "protocol": "TCP"}],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}},
                        "livenessProbe": {"httpGet": {"path": "/health", "port": 8080}, "initialDelaySeconds": 60,
                                          "timeoutSeconds": 5, "failureThreshold": 5},
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8181}, "periodSeconds": 2},
                    }],
                    "dnsPolicy": "Default",
                    "volumes": [{"name": "config-volume", "configMap": {"name": name,
                                                                         "items": [{"key": "Corefile", "path": "Corefile"}]}},
                                bin_volume],
                },
            },
        }},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "kube-dns", "namespace": ns, "labels": labels,
                                                             "annotations": {"prometheus.io/port": "9153",
                                                                             "prometheus.io/scrape": "true"}},
         "spec": {"selector": {"k8s-app": "kube-dns"}, "clusterIP": cfg.cluster_dns,
                  "ports": [{"name": "dns", "port": 53, "protocol": "UDP"},
                            {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                            {"name": "metrics", "port": 9153, "protocol": "TCP"}]}},
    ]


STORAGE_CLASS = "local-path"
LOCAL_PATH_NS = "local-path-storage"
DEFAULT_CLASS = "storageclass.kubernetes.io/is-default-class"


def local_path(cfg: Config, binary: Path, storage: Path) -> list[Obj]:
    """rancher's local-path-provisioner as upstream deploys it (deploy/local-path-storage.yaml),
    the default StorageClass, as in k3s. Its program is the node's own (the kube multicall), in an
    empty image; its helper pods, which make and remove a volume's directory, run the airgap
    busybox image with no volume of their own: local-path-provisioner refuses a helper template
    with hostPath volumes (its CVE fix), and k4s does not turn that fence off. Volumes live
    under storage: on the data disk when the node has one, else in RAM."""
    ns, sa, name = LOCAL_PATH_NS, "local-path-provisioner-service-account", "local-path-provisioner"
    command, bin_mount, bin_volume = node_program(binary, LOCAL_PATH)
    labels = {"app": name, **LABELS}
    config = {"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": [str(storage)]}]}
    helper = {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "helper-pod"},
        "spec": {
            "priorityClassName": "system-node-critical",
            "tolerations": [{"key": "node.kubernetes.io/disk-pressure", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{
                "name": "helper-pod", "image": oci.BUSYBOX, "imagePullPolicy": "Never",
                "resources": {"limits": {"memory": "32Mi"}},
            }],
        },
    }
    import json

    import yaml

    meta = {"namespace": ns, "labels": labels}
    return [
        # its helper pods make and remove volume directories through a hostPath: more than baseline
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": {
            **LABELS, "pod-security.kubernetes.io/enforce": "privileged"}}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": sa, **meta}},
        {"apiVersion": f"{RBAC}/v1", "kind": "Role", "metadata": {"name": "local-path-provisioner-role", **meta},
         "rules": [{"apiGroups": [""], "resources": ["pods"],
                    "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRole",
         "metadata": {"name": "local-path-provisioner-role", "labels": labels},
         "rules": [
             {"apiGroups": [""], "resources": ["nodes", "persistentvolumeclaims", "configmaps", "pods", "pods/log"],
              "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["persistentvolumes"],
              "verbs": ["get", "list", "watch", "create", "patch", "update", "delete"]},
             {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
             {"apiGroups": ["storage.k8s.io"], "resources": ["storageclasses"], "verbs": ["get", "list", "watch"]},
         ]},
        {"apiVersion": f"{RBAC}/v1", "kind": "RoleBinding", "metadata": {"name": "local-path-provisioner-bind", **meta},
         "roleRef": {"apiGroup": RBAC, "kind": "Role", "name": "local-path-provisioner-role"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
        {"apiVersion": f"{RBAC}/v1", "kind": "ClusterRoleBinding",
         "metadata": {"name": "local-path-provisioner-bind", "labels": labels},
         "roleRef": {"apiGroup": RBAC, "kind": "ClusterRole", "name": "local-path-provisioner-role"},
         "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": ns}]},
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "local-path-config", **meta}, "data": {
            "config.json": json.dumps(config, indent=2),
            "setup": '#!/bin/sh\nset -eu\nmkdir -m 0777 -p "$VOL_DIR"\n',
            "teardown": '#!/bin/sh\nset -eu\nrm -rf "$VOL_DIR"\n',
            "helperPod.yaml": yaml.safe_dump(helper, sort_keys=False),
        }},
        {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": name, **meta}, "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": labels},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "serviceAccountName": sa,
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"},
                                    {"key": "node-role.kubernetes.io/control-plane", "effect": "NoSchedule"}],
                    "containers": [{
                        "name": name, "image": oci.SCRATCH, "imagePullPolicy": "Never",
                        "command": [*command, "start", "--config", "/etc/config/config.json"],
                        "env": [{"name": "POD_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
                                {"name": "CONFIG_MOUNT_PATH", "value": "/etc/config/"},
                                {"name": "GOGC", "value": str(cfg.component_gogc)}],
                        "resources": {"limits": {"memory": "64Mi"}, "requests": {"cpu": "10m", "memory": "16Mi"}},
                        "volumeMounts": [{"name": "config-volume", "mountPath": "/etc/config/", "readOnly": True},
                                         bin_mount],
                        "securityContext": {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                            "capabilities": {"drop": ["ALL"]}},
                    }],
                    "volumes": [{"name": "config-volume", "configMap": {"name": "local-path-config"}}, bin_volume],
                },
            },
        }},
        {"apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
         "metadata": {"name": STORAGE_CLASS, "labels": LABELS, "annotations": {DEFAULT_CLASS: "true"}},
         "provisioner": "rancher.io/local-path", "volumeBindingMode": "WaitForFirstConsumer",
         "reclaimPolicy": "Delete"},
    ]
