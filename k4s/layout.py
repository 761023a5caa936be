"""Where everything lives: the appliance image's fixed layout, and the node's
state under data-dir and run-dir. The image builder, init, the config
defaults and the host tools all read these names from here.

The image is merged-/usr, like Debian: /bin, /sbin, /lib and /lib64 are
symlinks into /usr, so no later initramfs segment can replace them.

    /init                          stage 0 (busybox sh): mounts the k4s part, execs k4s init
    /etc/k4s/config.yaml           the embedded config (CONFIG_FILE)
    /etc/k4s/modules.list          modules init loads (MODULES_LIST)
    /usr/lib/k4s/k4s               the frozen k4s (BUNDLE); applet names link to it
    /usr/lib/k4s/parts/P.squashfs  a part kept compressed in RAM, mounted at parts/P
    /usr/libexec/k4s/              the upstream binaries (bin-dir, LIBEXEC)
    /usr/libexec/k4s/images/       airgap OCI tarballs (IMAGES)
    /var/lib/k4s/                  the node's state (data-dir, DATA_DIR): pki/, manifests/, ...
    /run/k4s/                      sockets, logs, status (run-dir, RUN_DIR)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# --- the appliance image ------------------------------------------------------------------

CONFIG_FILE = Path("/etc/k4s/config.yaml")
MODULES_LIST = Path("/etc/k4s/modules.list")
JOIN_SECRET = Path("/etc/k4s/join")  # a machine's own join secret: its own initrd segment, 0600, deleted once joined
RESTORE_DIR = Path("/etc/k4s/restore")  # a server's restore segment (k4s etcd-snapshot restore): deleted once used
PARTS_CHECK = Path("/etc/k4s/parts.sha256")  # from stage 1: the signed hashes stage 0 checks the parts against
MEASURE_LOG = Path("/etc/k4s/tpm2-measure.log")  # from stage 1: what it extended PCR 15 with (k4s.sys.tpm.read_log)
BUNDLE = Path("/usr/lib/k4s")
K4S = BUNDLE / "k4s"
PARTS_DIR = BUNDLE / "parts"
LIBEXEC = Path("/usr/libexec/k4s")
IMAGES = LIBEXEC / "images"
DATA_DIR = Path("/var/lib/k4s")
RUN_DIR = Path("/run/k4s")
USER_KUBECONFIG = Path("/etc/k4s/k4s.yaml")
LOG_LINK = Path("/var/log/k4s")  # -> run-dir/log: the kubelet serves /var/log (`.../proxy/logs/k4s/`)
MERGED = {"bin": "usr/bin", "sbin": "usr/sbin", "lib": "usr/lib", "lib64": "usr/lib64"}
PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{LIBEXEC}"

# --- the image's parts: which file goes where (k4s.mkimage builds from this table) ---------

# The parts, in segment order: one compressed cpio segment each, so the size report is
# exact and an unchanged part reuses its cached segment.
#   base        merged-/usr links, directories, device nodes, the rootfs overlay, stage 0
#   k4s         the frozen bundle (BUNDLE)
#   libs        the ldd closure of every ELF below
#   tools       busybox and its applet links, HOST_TOOLS, XTABLES plugins
#   kubernetes  the kube multicall (KUBE_MULTICALL: Kubernetes, etcd, containerd, flanneld, CoreDNS,
#               crictl...) under LIBEXEC; its names link to it
#   runtime     every other program under LIBEXEC: the runc shim, runc, the cni multicall
#   images      airgap OCI tarballs (IMAGES)
#   modules     kernel modules from MODULES_LIST and DATA_DISK_MODULES, with depmod's output
PARTS = ("base", "k4s", "libs", "tools", "kubernetes", "runtime", "images", "modules")
# These become squashfs files that init mounts read-only through loop devices: their
# bytes stay compressed in RAM instead of being unpacked into the RAM root.
SQUASHFS_PARTS = ("k4s", "kubernetes", "runtime", "images")
KUBE_MULTICALL = "kube"  # the file every Kubernetes component name links to


def binary_part(file: str) -> str:
    """The part a program under LIBEXEC goes in."""
    return "kubernetes" if file == KUBE_MULTICALL else "runtime"


# Names the components find first in their PATH (bin-dir, LIBEXEC) -> what answers them.
# kube-proxy in nftables mode runs `modprobe -va ip_vs` at every start, before it serves (its
# clean-up of IPVS leftovers, of which a fresh node has none): busybox's modprobe answers in
# milliseconds; the k4s applet, which the kernel and people get, is a Python start.
COMPONENT_TOOLS = {"modprobe": "/usr/bin/busybox"}
# Programs from the build host the node execs: host path -> more names (links) for it.
HOST_TOOLS = {
    "/usr/sbin/nft": (),
    "/usr/sbin/xtables-nft-multi": ("iptables", "iptables-save", "iptables-restore", "ip6tables",
                                    "ip6tables-save", "ip6tables-restore"),
    "/usr/sbin/conntrack": (),
    "/usr/sbin/mke2fs": ("mkfs.ext4",),  # formats a blank data disk (k4s.boot.datadisk)
    "/usr/sbin/cryptsetup": (),  # formats and opens a sealed one (k4s.boot.sealeddisk)
}
XTABLES = Path("/usr/lib/x86_64-linux-gnu/xtables")  # iptables loads its matches and targets from here
# The nodes /init needs before devtmpfs is mounted (without urandom Python dies at start):
# (path, major, minor, mode)
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666), ("dev/urandom", 1, 9, 0o666),
           ("dev/random", 1, 8, 0o666), ("dev/tty", 5, 0, 0o666), ("dev/kmsg", 1, 11, 0o644))
SKELETON = ("proc", "sys", "dev", "run", "tmp", "root", "etc", str(DATA_DIR).lstrip("/"), "var/log", "usr/bin", "usr/sbin",
            "usr/lib64", "mnt")
# Modules a data disk needs (k4s.data): the disk's bus, and ext4. init loads them only then, in
# this order. The checksums' generic drivers come first: sd_mod's t10-pi (and ext4) ask the
# crypto API for them, and an algorithm that is not loaded is a request_module, which runs
# /sbin/modprobe (a Python start each: the missing crc64-rocksoft alone cost 6 s).
DATA_DISK_MODULES = ("crct10dif_generic", "crc64_rocksoft_generic", "crc32c_generic", "virtio_blk", "virtio_scsi",
                     "sd_mod", "ahci", "nvme", "ext4")
# ...and a sealed one (LUKS2, k4s.data-encrypt=tpm), before cryptsetup runs: device-mapper,
# dm-crypt, AES-XTS (with AES-NI where the CPU has it), and the kernel crypto API's socket, by
# which cryptsetup checks the cipher; each one missing would be a request_module.
SEALED_DISK_MODULES = ("dm_mod", "dm_crypt", "ecb", "xts", "cryptd", "crypto_simd", "aesni_intel", "af_alg",
                       "algif_skcipher")
UEFI_MODULES = ("efivarfs",)  # loaded under UEFI only (elsewhere it fails): Secure Boot's state
STAGE0_MODULES = ("loop", "squashfs")  # stage 0 loads these to mount the k4s part
# Applets worth a name of their own; the rest run as `k4s NAME`. No kubectl on the node
# (no shell either): it is driven from outside with the kubeconfig.
APPLET_LINKS = {
    "/usr/sbin": ("init", "poweroff", "reboot", "halt", "modprobe", "insmod", "lsmod"),
    "/usr/bin": ("cpio", "crictl"),  # crictl: the node's containerd, from a debug pod's chroot /host
}

# Stage 1 (LinuxBoot / PXE) is one part: a lean build of the same multicall with these applets
# only (build/stage1.spec), /init running `stage1`, these names linked to it in /usr/sbin, the
# NIC's modules (DHCP needs AF_PACKET, built in), and what it verifies payloads with.
STAGE1_APPLETS = ("stage1", "kexec", "modprobe", "lsmod", "verify", "poweroff", "reboot", "halt")
# No /sbin/modprobe: the kernel's own module requests (IMA asks for sha384 and sha512 while the
# kernel boots) would each run the Python bundle, 2.4 s apiece under TCG before stage 1 starts;
# without it they fail at once. Stage 1 loads its modules itself (init.load_modules).
STAGE1_LINKS = ("kexec", "poweroff", "reboot")
STAGE1_MODULES = ("virtio_pci", "virtio_net", "e1000", "e1000e")
STAGE1_SKELETON = ("proc", "sys", "dev", "run", "tmp", "etc/k4s", "usr/bin", "usr/sbin", "usr/lib64")
STAGE1_PUBLIC_KEY = Path("/etc/k4s/signing.pub")  # every payload's manifest must verify with it
STAGE1_PAYLOAD_CA = Path("/etc/k4s/payload-ca.pem")  # `mkimage --stage1 --payload-ca`: an https server's CA
STAGE1_MIN_SERIAL = Path("/etc/k4s/min-serial")  # `mkimage --stage1 --min-serial`: the lowest serial it boots


def member(path: Path | str) -> str:
    """An absolute image path as an archive member name (no leading slash)."""
    return str(path).lstrip("/")


def part_squashfs(part: str) -> Path:
    return PARTS_DIR / f"{part}.squashfs"


def part_mount(part: str) -> Path:
    return PARTS_DIR / part


# --- the node's state ---------------------------------------------------------------------

@dataclass(frozen=True)
class Paths:
    """The paths derived from data-dir and run-dir."""

    data: Path
    run: Path

    @classmethod
    def of(cls, data_dir: str | Path, run_dir: str | Path) -> Paths:
        return cls(Path(data_dir), Path(run_dir))

    @property
    def pki(self) -> Path:
        """Certificates and keys, laid out like kubeadm's /etc/kubernetes/pki."""
        return self.data / "pki"

    @property
    def kubeconfigs(self) -> Path:
        return self.data / "kubeconfig"

    def kubeconfig(self, user: str) -> Path:
        return self.kubeconfigs / f"{user}.conf"

    @property
    def admin_kubeconfig(self) -> Path:
        return self.kubeconfig("admin")

    @property
    def manifests(self) -> Path:
        """The auto-deploy directory, like k3s's server/manifests."""
        return self.data / "manifests"

    @property
    def images(self) -> Path:
        """Airgap tarballs a user drops in, beside the image's own (IMAGES)."""
        return self.data / "images"

    @property
    def storage(self) -> Path:
        """Local volumes (local-path-provisioner): on the data disk when the node has one."""
        return self.data / "storage"

    @property
    def logs(self) -> Path:
        return self.run / "log"

    @property
    def status(self) -> Path:
        return self.run / "status.json"

    @property
    def certs(self) -> Path:
        """Every certificate's expiry and the renewals so far (k4s.cluster.renew)."""
        return self.run / "certs.json"

    @property
    def events(self) -> Path:
        """Every log event as a JSON line: what tools read (the console is for people)."""
        return self.run / "events.jsonl"
