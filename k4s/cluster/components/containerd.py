"""containerd: the CRI runtime with runc, overlayfs (native where overlay is impossible), CNI bridge."""

from __future__ import annotations

import json
import socket

from k4s import events, log
from k4s.cluster.node import Node
from k4s.config import Config
from k4s.fsutil import write_atomic
from k4s.image.oci import PAUSE_VERSION, REGISTRY

BINARY = "containerd"
CTR, CRICTL = "ctr", "crictl"  # containerd's clients (names of the kube multicall; `k4s crictl`)
SHIM, RUNC = "containerd-shim-runc-v2", "runc"
CNI_PLUGINS = ("bridge", "host-local", "loopback", "portmap")  # names of the cni multicall
HELPERS = (SHIM, RUNC, CTR, CRICTL, *CNI_PLUGINS)
NODE = True
HOST = None
READY_TIMEOUT = 120.0


def ports(cfg: Config) -> list[tuple[str, int]]:
    return []  # a unix socket in run-dir
CNI_NETWORK = "k4s"


def overlay_supported() -> bool:
    try:
        with open("/proc/filesystems", encoding="ascii") as f:
            return any(line.split()[-1] == "overlay" for line in f if line.strip())
    except OSError:
        return False


def cni_conflist(node: Node) -> str:
    """Without flannel: a bridge network for the node's pod /24 on this node only."""
    return bridge_conflist(node, node.pod_subnet)


def bridge_conflist(node: Node, subnet: str, ip_masq: bool = True, mtu: int | None = None) -> str:
    """The pods' bridge on subnet with host-local addresses, and portmap for hostPort."""
    bridge = {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": ip_masq, "hairpinMode": True}
    if mtu:
        bridge["mtu"] = mtu
    bridge["ipam"] = {"type": "host-local", "ranges": [[{"subnet": subnet}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(node.cni_ipam_dir)}
    return json.dumps({
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [bridge, {"type": "portmap", "capabilities": {"portMappings": True}}],
    }, indent=2) + "\n"


def toml_str(value: object) -> str:
    """A TOML basic string: JSON's string escapes are TOML's, so no value can end the
    string and add a key (config values are validated too; this is the second fence)."""
    return json.dumps(str(value))


def config_toml(node: Node) -> str:
    run, data = node.paths.run / "containerd", node.paths.data / "containerd"
    snapshotter = "overlayfs" if overlay_supported() else "native"
    q = toml_str
    return f"""version = 3
root = {q(data)}
state = {q(run)}
# Plugins a single RAM-only node never uses: less memory, faster start.
disabled_plugins = [
  "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.blockfile",
  "io.containerd.snapshotter.v1.erofs",
  "io.containerd.nri.v1.nri",
]

[grpc]
  address = {q(node.containerd_socket)}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = {q(snapshotter)}
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {q(f"{REGISTRY}/pause:{PAUSE_VERSION}")}

[plugins."io.containerd.cri.v1.runtime"]
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{q(node.bin_dir)}]
    conf_dir = {q(node.cni_conf_dir)}
  [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
    runtime_type = "io.containerd.runc.v2"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
      BinaryName = {q(node.bin(RUNC))}
      SystemdCgroup = false
      # Only where pivot_root(2) is refused (a root with no parent: the initramfs
      # itself, which the appliance's stage 0 binds over): runc then moves the
      # container root and chroots, which is weaker.
      NoPivotRoot = {str(root_has_no_parent()).lower()}
"""


def root_has_no_parent(mountinfo: str = "/proc/self/mountinfo") -> bool:
    """True when / is the root mount of the mount namespace (the initramfs, when nothing was
    bound over it): pivot_root(2) refuses such a root. In mountinfo the visible / is the
    last line for it, and the namespace's root mount is its own parent."""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as f:
            roots = [ln.split()[:2] for ln in f if len(ln.split()) > 4 and ln.split()[4] == "/"]
    except OSError:
        return False
    return bool(roots) and roots[-1][0] == roots[-1][1]


def command(node: Node) -> list[str]:
    etc = node.paths.data / "containerd-config"
    write_atomic(etc / "config.toml", config_toml(node))
    bridge = node.cni_conf_dir / "10-k4s.conflist"
    if "flannel" in node.cfg.disable:
        write_atomic(bridge, cni_conflist(node))
    else:  # flannel's lease decides the node's subnet (components.flannel writes the network)
        for stale in (bridge, node.cni_conf_dir / "10-flannel.conflist"):
            stale.unlink(missing_ok=True)
    node.containerd_socket.parent.mkdir(parents=True, exist_ok=True)
    log.event(*events.CONTAINERD_RUNTIME, pivot_root="no (chroot)" if root_has_no_parent() else "yes")
    return [str(node.bin(BINARY)), f"--config={etc / 'config.toml'}", "--log-level=warn"]


def ready(node: Node) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        s.connect(str(node.containerd_socket))
    return True
