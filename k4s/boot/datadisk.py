"""The node's optional data disk: where its state lives when the machine has a disk.

    k4s.data=LABEL=K4SDATA      the ext4 filesystem with that label
    k4s.data=/dev/vdb           that device (ext4, any label)
    k4s.data-format=1           format it first if, and only if, it is blank
    k4s.data-encrypt=tpm        format it as LUKS2, its key sealed to the TPM (k4s.boot.sealeddisk)

Without k4s.data the node is RAM-only, as it always was. With it, init mounts
the filesystem at data-dir before anything writes there: etcd, the PKI,
containerd's content and snapshots, the kubelet's state and local volumes then
survive a reboot and a power cut (etcd fsyncs what it acknowledges; ext4's
journal replays at the next mount).

Formatting is never destructive: only a disk whose first MiB is all zeros (no
partition table, no filesystem) is formatted, so a wrong device name or label
on the (untrusted) command line cannot wipe anything. A disk that holds
something else is an error line, as is a label that no disk carries.

The boot media's own files under data-dir (the operator CA's certificate and
the manifests from the seed, the image's manifests) are inputs for this boot:
they are copied over the disk's copies before the disk takes data-dir's place,
never through a symlink the disk holds.

What the disk is trusted with: everything the node keeps (its CA keys, the
secretbox key beside the Secrets it encrypts, etcd's data), so whoever can read
the disk has the cluster; it is the machine's own, like its RAM. It is not
trusted to run anything: removable media are never used, it is mounted nosuid
and nodev, and nothing copied onto it follows a link it holds.
"""

from __future__ import annotations

import os
import shutil
import struct
import time
from dataclasses import dataclass
from pathlib import Path

from k4s import events, layout, log
from k4s.boot import sealeddisk
from k4s.errors import K4sError
from k4s.sys import libc, process

DEFAULT_LABEL = "K4SDATA"  # what a device path formats with
PROBE_BYTES = 1 << 20      # a disk is blank when this much of its start is zeros
EXT_SUPERBLOCK, EXT_MAGIC = 1024, 0xEF53
SETTLE = 15.0              # how long a named disk may take to appear (disk drivers probe asynchronously)
FORMAT_TIMEOUT = 600.0
SKIP = ("loop", "ram", "zram", "sr", "fd", "nbd", "dm-", "md")  # not data disks
MOUNT_FLAGS = libc.MS_NOSUID | libc.MS_NODEV
MKFS = "mke2fs"
# Shipped in the image's modules part, loaded only for a data disk: the disk drivers
# of QEMU and of common servers, and ext4 (its checksums need crc32c).
MODULES = layout.DATA_DISK_MODULES

_mounted: list[str] = []  # what release() unmounts at poweroff


class NotYet(K4sError):
    """The disk is not there (yet): worth waiting for while devices settle."""


@dataclass(frozen=True)
class Disk:
    dev: Path
    kind: str          # "ext4" (ext2/3/4), "luks" (LUKS2, sealed: k4s.boot.sealeddisk), "blank", or "other"
    label: str = ""
    whole: bool = True  # a whole disk, not a partition

    @property
    def name(self) -> str:
        return str(self.dev)


def classify(head: bytes) -> tuple[str, str]:
    """(kind, label) from a device's first bytes."""
    sb = head[EXT_SUPERBLOCK:EXT_SUPERBLOCK + 1024]
    if len(sb) >= 136 and struct.unpack_from("<H", sb, 56)[0] == EXT_MAGIC:
        return "ext4", sb[120:136].split(b"\0", 1)[0].decode("utf-8", "replace")
    if sealeddisk.is_luks(head):
        return "luks", sealeddisk.luks_label(head)
    if not head.strip(b"\0"):
        return "blank", ""
    return "other", ""


def probe(dev: Path, whole: bool = True) -> Disk:
    try:
        with open(dev, "rb") as f:
            head = f.read(PROBE_BYTES)
    except OSError as e:
        raise K4sError(f"data disk {dev}: cannot read it: {e.strerror}",
                       hint="check the device name (k4s.data=/dev/vdb) and that the disk is attached") from None
    kind, label = classify(head)
    return Disk(dev, kind, label, whole)


def removable(entry: Path) -> bool:
    """A USB stick or card (the disk's own `removable`, or its whole disk's for a partition):
    never a data disk, whatever its label says."""
    for p in (entry / "removable", entry.parent / "removable", entry.resolve().parent / "removable"):
        try:
            if p.read_text().strip() == "1":
                return True
        except OSError:
            continue
    return False


def block_devices(sys_block: Path = Path("/sys/class/block"), dev: Path = Path("/dev")) -> list[Disk]:
    """Every disk and partition the kernel knows, probed."""
    out = []
    for entry in sorted(sys_block.iterdir()) if sys_block.is_dir() else []:
        if entry.name.startswith(SKIP) or not (dev / entry.name).exists():
            continue
        try:
            if (entry / "size").read_text().strip() == "0" or removable(entry):
                continue
        except OSError:
            continue
        try:
            out.append(probe(dev / entry.name, whole=not (entry / "partition").exists()))
        except K4sError:
            continue
    return out


def choose(spec: str, fmt: bool, disks: list[Disk]) -> tuple[Disk, str]:
    """The disk k4s.data names, and the label to format it with ("" to mount it as it is)."""
    if spec.startswith("LABEL="):
        label = spec[len("LABEL="):]
        found = [d for d in disks if d.kind in ("ext4", "luks") and d.label == label]
        if len(found) > 1:
            raise K4sError(f"data disk: {len(found)} filesystems are labelled {label} "
                           f"({', '.join(d.name for d in found)})",
                           hint="relabel one (e2label), or name the device: k4s.data=/dev/vdb")
        if found:
            return found[0], ""
        blank = [d for d in disks if d.kind == "blank" and d.whole]
        if not fmt:
            raise NotYet(f"data disk: no filesystem is labelled {label}",
                         hint="attach the disk; format a blank one by adding k4s.data-format=1")
        if len(blank) > 1:
            raise K4sError(f"data disk: no filesystem is labelled {label}, and {len(blank)} disks are blank "
                           f"({', '.join(d.name for d in blank)})",
                           hint="name the one to format: k4s.data=/dev/vdb k4s.data-format=1")
        if not blank:
            raise NotYet(f"data disk: no filesystem is labelled {label}, and no disk is blank to format",
                         hint="attach an empty disk; k4s formats only disks whose first MiB is zeros")
        return blank[0], label
    found = [d for d in disks if d.dev == Path(spec)]
    if not found:
        if removable(Path("/sys/class/block") / Path(spec).name):
            raise K4sError(f"data disk: {spec} is removable media", hint="k4s keeps its state only on a fixed disk")
        raise NotYet(f"data disk: {spec} does not exist", hint="check the device name, e.g. /dev/vdb")
    disk = found[0]
    if disk.kind in ("ext4", "luks"):
        return disk, ""
    if disk.kind == "blank" and fmt:
        return disk, DEFAULT_LABEL
    if disk.kind == "blank":
        raise K4sError(f"data disk: {spec} is blank", hint="add k4s.data-format=1 to format it as ext4")
    raise K4sError(f"data disk: {spec} holds something other than an ext4 filesystem",
                   hint="k4s formats only blank disks; clear it first (wipefs -a), or name another device")


def find(spec: str, fmt: bool, settle: float = SETTLE) -> tuple[Disk, str]:
    """choose() over the devices, waiting up to settle seconds for a missing one to appear."""
    end = time.monotonic() + settle
    while True:
        try:
            return choose(spec, fmt, block_devices())
        except NotYet:
            if time.monotonic() > end:
                raise
            time.sleep(0.5)


def load_modules(names: tuple[str, ...] = MODULES) -> None:
    from k4s.sys import kmod

    idx = kmod.Index.load()
    for name in names:
        try:
            kmod.modprobe(idx, name)
        except K4sError as e:
            log.event("data", "module-failed", level="warn", module=name, error=e.message)


def make_filesystem(dev: Path, label: str) -> None:
    """ext4 with the image's mke2fs: no blocks reserved for root (the node is the only user)."""
    process.run_tool([MKFS, "-q", "-F", "-t", "ext4", "-L", label, "-m", "0", str(dev)], f"formatting {dev}",
                     FORMAT_TIMEOUT, slow_hint="the disk is too slow or too large to format at boot; format it beforehand")


def copy_inputs(src: Path, dst: Path) -> None:
    """This boot's files under src onto the disk at dst, never through a link the disk holds: a
    directory on the disk that is a symlink is an error; a file is replaced by a rename (which
    replaces a link itself, not what it points at)."""
    for root, dirs, files in os.walk(src):
        rel = Path(root).relative_to(src)
        for d in dirs:
            target = dst / rel / d
            if target.is_symlink() or (target.exists() and not target.is_dir()):
                raise K4sError(f"data disk: {rel / d} on the disk is not a directory (a link?)",
                               hint="the disk's state is not k4s's; check it, or start it afresh")
            if (Path(root) / d).is_symlink():
                continue
            target.mkdir(exist_ok=True)
        for f in files:
            source, target = Path(root) / f, dst / rel / f
            tmp = target.with_name(f".{f}.k4s-tmp")
            tmp.unlink(missing_ok=True)
            if source.is_symlink():
                os.symlink(os.readlink(source), tmp)
            else:
                shutil.copy2(source, tmp, follow_symlinks=False)
            os.replace(tmp, target)


def mount(spec: str, fmt: bool, data_dir: Path, staging: Path, encrypt: bool = False) -> Disk:
    """Find (and if asked, format) the data disk and mount it at data_dir, with this boot's
    inputs from data_dir copied onto it. A sealed disk (LUKS2) is unsealed and opened first;
    with `encrypt`, a blank one is formatted sealed."""
    load_modules()
    disk, label = find(spec, fmt)
    dev = disk.dev
    if disk.kind == "luks" or (label and encrypt):
        load_modules(layout.SEALED_DISK_MODULES)
    if disk.kind == "luks":
        dev = sealeddisk.unlock(disk.dev)
    if label:
        log.event(*events.DATA_FORMAT, device=disk.name, label=label, encrypt="tpm" if encrypt else "none")
        t0 = time.monotonic()
        if encrypt:
            dev = sealeddisk.format_and_open(disk.dev, label)
        try:
            make_filesystem(dev, label)
        except K4sError:
            if encrypt:
                sealeddisk.discard(disk.dev)  # blank again, not a volume with nothing in it
            raise
        log.event(*events.DATA_FORMATTED, device=disk.name, seconds=round(time.monotonic() - t0, 1))
    staging.mkdir(parents=True, exist_ok=True)
    try:
        libc.mount(str(dev), str(staging), "ext4", MOUNT_FLAGS, "")
    except OSError as e:
        raise K4sError(f"data disk: cannot mount {dev}: {e.strerror}",
                       hint="the kernel needs the ext4 module; check the filesystem (e2fsck)") from None
    put_at(staging, data_dir, disk.name, "the disk may be full or read-only; check it (e2fsck)")
    used = shutil.disk_usage(data_dir)
    log.event(*events.DATA_MOUNTED, device=disk.name, label=label or disk.label, at=str(data_dir),
              size_mib=used.total >> 20, used_mib=used.used >> 20)
    return disk


def put_at(staging: Path, data_dir: Path, what: str, hint: str) -> None:
    """The filesystem mounted at staging onto data_dir, with this boot's inputs from data_dir
    copied onto it first."""
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
        copy_inputs(data_dir, staging)
        libc.mount(str(staging), str(data_dir), "", libc.MS_MOVE)
    except OSError as e:
        libc.umount(str(staging))
        raise K4sError(f"data: cannot put {what} at {data_dir}: {e.strerror or e}", hint=hint) from None
    _mounted.append(str(data_dir))


def mount_ram(data_dir: Path, staging: Path) -> None:
    """Without a data disk, a tmpfs at data_dir rather than the initramfs's root: the kubelet's
    cAdvisor measures the node's and the images' filesystem only on a type it knows, and
    "rootfs" is none (the kubelet of Kubernetes 1.37 does not start on it). A tmpfs is also
    bounded (half the RAM, as any tmpfs): a pod filling its emptyDir meets ENOSPC and the
    kubelet's nodefs eviction, not the OOM killer."""
    staging.mkdir(parents=True, exist_ok=True)
    try:
        libc.mount("tmpfs", str(staging), "tmpfs", MOUNT_FLAGS, "mode=0755")
    except OSError as e:
        raise K4sError(f"data: cannot mount a tmpfs: {e.strerror}", hint="the kernel needs tmpfs") from None
    put_at(staging, data_dir, "a tmpfs", "check the memory left for the node")


def release() -> None:
    """At poweroff, once every process is gone: detach the disk (with what the kubelet and
    containerd mounted under it) and write everything out."""
    while _mounted:
        target = _mounted.pop()
        try:
            libc.umount(target, libc.MNT_DETACH)
        except OSError:
            pass
    os.sync()
