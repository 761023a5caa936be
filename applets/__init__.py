"""The applet table: name -> (module path, one-line summary).

Dispatch imports only the module of the applet it runs. The PyInstaller spec
derives its hidden imports from this table, and the frozen smoke test runs
every applet here with --help through a symlink.
"""

from __future__ import annotations

APPLETS: dict[str, tuple[str, str]] = {
    "api-proxy": ("applets.api_proxy", "one address for the API of several servers, on the operator's host (as a worker's balancer)"),
    "config": ("applets.config", "show or validate the effective configuration"),
    "containerd": ("applets.containerd", "run containerd configured from the k4s config"),
    "cpio": ("applets.cpio", "list, extract (safely) or create newc cpio archives"),
    "crictl": ("applets.crictl", "crictl from bin-dir, talking to this node's containerd"),
    "etcd": ("applets.etcd", "run etcd configured from the k4s config"),
    "etcd-snapshot": ("applets.etcd_snapshot", "save a server's etcd snapshot (with its keys, sealed) from the operator's host, checked; restore one onto an empty server"),
    "halt": ("applets.halt", "stop the node in order and halt"),
    "init": ("applets.init", "PID 1 of the appliance: mounts, network, node, clean shutdown"),
    "insmod": ("applets.insmod", "load one kernel module file"),
    "kexec": ("applets.kexec", "load a kernel with its initrds and boot into it (kexec_file_load)"),
    "keygen": ("applets.keygen", "make the keys that sign boot payloads and Secure Boot images (build host)"),
    "kube-apiserver": ("applets.kube_apiserver", "run kube-apiserver configured from the k4s config"),
    "kube-controller-manager": ("applets.kube_controller_manager", "run kube-controller-manager configured from the k4s config"),
    "kube-proxy": ("applets.kube_proxy", "run kube-proxy configured from the k4s config"),
    "kube-scheduler": ("applets.kube_scheduler", "run kube-scheduler configured from the k4s config"),
    "kubectl": ("applets.kubectl", "kubectl from bin-dir (host builds), with the admin kubeconfig by default"),
    "kubelet": ("applets.kubelet", "run the kubelet configured from the k4s config"),
    "lsmod": ("applets.lsmod", "list the loaded kernel modules"),
    "mkimage": ("applets.mkimage", "build the appliance initramfs with a size breakdown"),
    "modprobe": ("applets.modprobe", "load kernel modules with their dependencies"),
    "netboot": ("applets.netboot", "prepare and serve a payload for PXE (iPXE) boot"),
    "oci": ("applets.oci", "build and list the airgap OCI image tarballs"),
    "pki": ("applets.pki", "create, renew and check the cluster certificates and kubeconfigs"),
    "poweroff": ("applets.poweroff", "stop the node in order and power off"),
    "reboot": ("applets.reboot", "stop the node in order and reboot"),
    "server": ("applets.server", "run the single-node cluster under the k4s supervisor"),
    "sign": ("applets.sign", "write the signed manifest of a payload directory"),
    "stage1": ("applets.stage1", "PID 1 of the first stage: network, fetch, verify, kexec (LinuxBoot)"),
    "status": ("applets.status", "show each component's state and readiness, memory and certificates, here or --remote"),
    "token": ("applets.token", "make, list and delete the bootstrap tokens workers join with"),
    "uki": ("applets.uki", "build stage 1 as a signed unified kernel image for UEFI Secure Boot"),
    "verify": ("applets.verify", "check a payload directory against its signed manifest"),
    "vm": ("applets.vm", "boot the appliance in QEMU on the build host (run, up, down)"),
}
