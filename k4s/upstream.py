"""The upstream versions built into this k4s: generated from build/components/lock.json by
`python3 build/components/build.py --table`; do not edit."""

VERSIONS = {
    'kubernetes': 'v1.37.2',
    'etcd': 'v3.7.4',
    'etcdctl': 'v3.7.4',
    'etcdutl': 'v3.7.4',
    'coredns': 'v1.15.0',
    'local-path-provisioner': 'v0.0.37',
    'containerd': 'v2.4.2',
    'flannel': 'v0.28.10',
    'crictl': 'v1.37.0',
    'runc': 'v1.5.3',
    'cni': 'v1.10.0',
    'pause': '3.10',
}
