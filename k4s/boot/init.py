"""PID 1 of the appliance: mount, configure, load modules, bring up the network,
run the node, and on a stop request or a fatal error end in a clean poweroff,
reboot or halt. It never returns and never lets the kernel panic.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from k4s import events, layout, log
from k4s.config import Config
from k4s.errors import K4sError
from k4s.sys import firmware, libc

CGROUP_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "hugetlb", "pids")
SYSCTLS = {
    "net/ipv4/ip_forward": "1",
    "net/bridge/bridge-nf-call-iptables": "1",
    "net/bridge/bridge-nf-call-ip6tables": "1",
    "vm/overcommit_memory": "1",
    "vm/panic_on_oom": "0",
    "kernel/panic": "10",
    "kernel/panic_on_oops": "1",
    "fs/inotify/max_user_instances": "8192",
    "fs/inotify/max_user_watches": "524288",
}
# What the kernel runs for a module it wants (request_module: a crypto algorithm, an nft
# expression, a netdev): busybox's modprobe, which answers in milliseconds, not the k4s applet
# (/sbin/modprobe, for people), a Python start of seconds under TCG. Set at the first mount,
# before any module is loaded.
KERNEL_MODPROBE = str(layout.LIBEXEC / "modprobe")

# (source, target, fstype, flags, data)
MOUNTS = [
    ("proc", "/proc", "proc", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, ""),
    ("sysfs", "/sys", "sysfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, ""),
    ("devtmpfs", "/dev", "devtmpfs", libc.MS_NOSUID, "mode=0755"),
    ("devpts", "/dev/pts", "devpts", libc.MS_NOSUID | libc.MS_NOEXEC, "gid=5,mode=620,ptmxmode=666"),
    ("tmpfs", "/dev/shm", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777"),
    ("tmpfs", "/run", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=0755"),
    ("tmpfs", "/tmp", "tmpfs", libc.MS_NOSUID | libc.MS_NODEV, "mode=1777"),
    ("cgroup2", "/sys/fs/cgroup", "cgroup2", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "nsdelegate"),
]
# No bpffs on /sys/fs/bpf: nothing of the node pins BPF objects, and mounting it asks the kernel
# for bpf_preload, a request_module that runs /sbin/modprobe (the k4s applet: a Python start)
# and held PID 1 for 3.5 s under TCG. A CNI that wants it mounts it, as Cilium's agent does.


def stage(name: str, **fields: object) -> None:
    log.event("init", name, **fields)


# securityfs: the lockdown mode (k4s.sys.firmware), a TPM's event log. Mounted where the kernel has it.
SECURITYFS = ("securityfs", str(firmware.SECURITYFS), "securityfs", libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC, "")


def mount_all() -> None:
    for source, target, fstype, flags, data in MOUNTS:
        os.makedirs(target, exist_ok=True)
        try:
            libc.mount(source, target, fstype, flags, data)
        except OSError as e:
            if e.errno == 16:  # EBUSY: already mounted (e.g. the kernel mounted devtmpfs)
                continue
            raise K4sError(f"mount {fstype} on {target}: {e.strerror}", hint="the kernel lacks this filesystem") from e
    try:
        Path("/proc/sys/kernel/modprobe").write_text(KERNEL_MODPROBE)
    except OSError:
        pass  # the default, /sbin/modprobe, answers too
    if os.path.isdir(SECURITYFS[1]):
        try:
            libc.mount(*SECURITYFS)
        except OSError:
            pass  # EBUSY (mounted already): firmware.trust reads it either way
    # Let kubelet's cgroupfs driver use every controller below the root.
    try:
        have = Path("/sys/fs/cgroup/cgroup.controllers").read_text().split()
        enable = " ".join(f"+{c}" for c in CGROUP_CONTROLLERS if c in have)
        Path("/sys/fs/cgroup/cgroup.subtree_control").write_text(enable)
    except OSError as e:
        raise K4sError(f"cannot enable cgroup v2 controllers: {e.strerror}",
                       hint="boot a kernel with cgroup v2 (CONFIG_CGROUPS, memory and cpu controllers)") from e


LOOP_CTL_GET_FREE, LOOP_CONFIGURE = 0x4C82, 0x4C0A
LO_FLAGS_READ_ONLY, LO_FLAGS_AUTOCLEAR = 1, 4


def mount_loop(image: Path, target: str, fstype: str) -> str:
    """Mount an image read-only through an auto-clearing loop device (what `mount -o loop,ro` does).

    The loop fd stays open until the mount holds the device: with autoclear,
    closing the last reference first would detach it again.
    """
    import fcntl
    import struct

    ctl = os.open("/dev/loop-control", os.O_RDWR | os.O_CLOEXEC)
    try:
        n = fcntl.ioctl(ctl, LOOP_CTL_GET_FREE)
    finally:
        os.close(ctl)
    dev = f"/dev/loop{n}"
    backing = os.open(image, os.O_RDONLY | os.O_CLOEXEC)
    loop = os.open(dev, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # struct loop_config {u32 fd; u32 block_size; struct loop_info64 info; u64 reserved[8]}:
        # fd and flags in one call (Linux 5.8+). In loop_info64, lo_flags sits at offset 52
        # and lo_file_name (64 bytes) at 56.
        config = bytearray(8 + 232 + 64)
        struct.pack_into("II", config, 0, backing, 0)
        struct.pack_into("I", config, 8 + 52, LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR)
        name = str(image).encode()[:63]
        config[8 + 56:8 + 56 + len(name)] = name
        fcntl.ioctl(loop, LOOP_CONFIGURE, bytes(config))
        libc.mount(dev, target, fstype, libc.MS_RDONLY | libc.MS_NODEV | libc.MS_NOSUID)
    finally:
        os.close(loop)
        os.close(backing)
    return dev


def mount_parts() -> int:
    """Mount each squashfs part of the image at its directory, its file locked in RAM."""
    count = 0
    for sq in sorted(layout.PARTS_DIR.glob("*.squashfs")) if layout.PARTS_DIR.is_dir() else []:
        target = sq.with_suffix("")
        target.mkdir(exist_ok=True)
        lock_in_ram(sq)
        if os.path.ismount(target):  # the k4s bundle: stage 0 (/init) mounted it
            count += 1
            continue
        try:
            mount_loop(sq, str(target), "squashfs")
        except OSError as e:
            raise K4sError(f"cannot mount {sq}: {e.strerror}",
                           hint="the kernel needs the loop and squashfs modules (etc/k4s/modules.list)") from e
        count += 1
    return count


def warm(path: Path) -> threading.Thread:
    """Read a file once, in a thread, so that its pages are decompressed into the page cache while
    PID 1 goes on (DHCP, the PKI). The kube multicall (~180 MB in a zstd squashfs) is what etcd,
    the apiserver and containerd all fault in first, at once; under TCG that was seconds of the
    apiserver's start. The read releases the GIL; the pages are clean cache, reclaimable."""
    def run() -> None:
        buf = bytearray(1 << 20)
        try:
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
        except OSError:
            pass  # the node reports a missing or unreadable binary itself

    t = threading.Thread(target=run, name="warm", daemon=True)
    t.start()
    return t


def lock_in_ram(path: Path) -> None:
    """Keep a squashfs part's pages out of swap (k4s.sys.zram): they are compressed already,
    so zram would store them whole and squashfs would read them back on every page-cache
    miss of the binaries. Without swap, tmpfs pages stay in RAM anyway; this keeps it so."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            libc.lock_in_ram(fd, os.fstat(fd).st_size)
        finally:
            os.close(fd)
    except OSError as e:
        stage("lock-failed", level="warn", part=path.name, error=e.strerror)


def grow_root() -> None:
    """The RAM root holds the node's state too: let it use most of memory, not tmpfs's default half."""
    try:
        libc.mount("rootfs", "/", "tmpfs", libc.MS_REMOUNT, "size=90%")
    except OSError as e:
        stage("grow-root-failed", level="warn", error=e.strerror)


def load_modules() -> tuple[int, int]:
    """Load the modules the image lists; how many were loaded, and the bytes of RAM root
    their files held (deleted once loaded: kmod.drop_loaded_files)."""
    from k4s.sys import kmod

    try:
        names = [ln.split("#")[0].strip() for ln in layout.MODULES_LIST.read_text().splitlines()]
    except OSError:
        return 0, 0
    if firmware.EFI.is_dir():
        names += layout.UEFI_MODULES
    idx = kmod.Index.load()
    count = 0
    for name in filter(None, names):
        try:
            count += len(kmod.modprobe(idx, name))
        except K4sError as e:
            stage("module-failed", level="warn", module=name, error=e.message)
    return count, kmod.drop_loaded_files(idx)


def firmware_trust() -> dict[str, str]:
    """Under UEFI, mount the firmware's variables read-only (nothing on a node writes them;
    load_modules loaded efivarfs), then what the firmware and the kernel say about boot trust."""
    if firmware.EFI.is_dir() and not os.path.ismount(firmware.EFIVARS):
        try:
            libc.mount("efivarfs", str(firmware.EFIVARS), "efivarfs",
                       libc.MS_RDONLY | libc.MS_NOSUID | libc.MS_NODEV | libc.MS_NOEXEC)
        except OSError as e:
            stage("efivarfs", level="warn", error=e.strerror)
    return firmware.trust()


def min_free_kbytes(mem_total_kib: int) -> int:
    """The kernel's own default reserve, 4 * sqrt(lowmem KiB) clamped to [128, 262144]
    (mm/page_alloc.c); with transparent huge pages on, khugepaged raises it to keep
    2 MiB blocks free (45 MiB at 1 GiB), RAM that nothing else may use."""
    return max(128, min(262144, int(4 * math.sqrt(mem_total_kib))))


def sysctls() -> None:
    from k4s.sys.mem import meminfo

    values = {f"/proc/sys/{k}": v for k, v in SYSCTLS.items()}
    # Huge pages only for programs that ask (madvise). With Debian's "always", the Go
    # heaps of the components sat in 2 MiB pages they barely used: ~400 of the 480 MiB
    # of anonymous memory at idle were huge pages.
    values["/sys/kernel/mm/transparent_hugepage/enabled"] = "madvise"
    try:
        values["/proc/sys/vm/min_free_kbytes"] = str(min_free_kbytes(meminfo()["MemTotal"]))
    except (OSError, ValueError, KeyError):
        pass
    for path, value in values.items():
        try:
            Path(path).write_text(value)
        except OSError as e:
            stage("sysctl-failed", level="warn", key=path, error=e.strerror)


def swap(percent: int, algorithm: str) -> None:
    """Compressed swap in RAM for the node's own processes (k4s.sys.zram); without it the
    node runs as before, so a failure is a warning."""
    from k4s.sys import zram
    from k4s.sys.mem import meminfo

    try:
        size, used = zram.setup(percent, meminfo()["MemTotal"], algorithm)
    except K4sError as e:
        stage("zram-failed", level="warn", error=e.message, hint=e.hint)
        return
    if not size:
        stage("zram", size_mib=0)
        return
    stage("zram", size_mib=size >> 20, algorithm=used, **({"wanted": algorithm} if used != algorithm else {}))


def default_node_name(cfg: Config) -> Config:
    """A stable per-machine name when none is configured: k4s-<last 3 MAC bytes>."""
    from k4s import config as configmod
    from k4s.boot.netconf import physical_interfaces

    if cfg.sources.get("node-name") != "default" or cfg.hostname:
        return cfg
    for iface in physical_interfaces():
        try:
            mac = Path(f"/sys/class/net/{iface}/address").read_text().strip().replace(":", "")
        except OSError:
            continue
        return configmod.replace(cfg, node_name=f"k4s-{mac[-6:]}")
    return cfg


# What PID 1 imports after its mounts, in a thread (preload): the network's code, then the node's.
PRELOAD = ("k4s.boot.netconf", "k4s.boot.power", "k4s.cluster.server")


def preload(modules: tuple[str, ...] = PRELOAD) -> threading.Thread:
    """Import modules in a thread while PID 1 mounts, loads kernel modules and waits for DHCP:
    under TCG the node's imports take seconds, and the second CPU is idle meanwhile. A module
    the main thread needs first waits on Python's import lock; an import that fails here fails
    again, with its error, where the main thread imports it."""
    import importlib

    def run() -> None:
        for m in modules:
            try:
                importlib.import_module(m)
            except Exception:  # noqa: BLE001 - the main thread's own import reports it
                return

    t = threading.Thread(target=run, name="preload", daemon=True)
    t.start()
    return t


def boot() -> str:
    """Bring the machine up and run the node; the power action to take at the end."""
    from k4s import config

    mount_all()
    stage(events.MOUNTS.event)
    preloading = preload()
    cfg = config.load(cmdline=config.read_proc_cmdline(), join_secret=str(layout.JOIN_SECRET))
    paths = layout.Paths.of(cfg.data_dir, cfg.run_dir)
    log.setup(paths.logs, cfg.log_level, events=paths.events, device=f"/dev/{cfg.events}" if cfg.events else None)
    stage("config", source=cfg.sources.get("node-name"))
    n, freed = load_modules()
    stage(events.MODULES.event, loaded=n, freed_kib=freed >> 10)
    stage(events.FIRMWARE.event, **firmware_trust())
    grow_root()
    stage(events.PAYLOAD.event, mounted=mount_parts())
    warm(Path(cfg.bin_dir) / layout.KUBE_MULTICALL)
    from k4s.boot import datadisk

    if cfg.data:
        datadisk.mount(cfg.data, cfg.data_format, paths.data, paths.run / "data-disk",
                       encrypt=cfg.data_encrypt == "tpm")
    else:
        datadisk.mount_ram(paths.data, paths.run / "data-ram")
    sysctls()
    swap(cfg.zram, cfg.zram_algorithm)
    cfg = default_node_name(cfg)
    try:
        libc.sethostname(cfg.hostname or cfg.node_name)
    except OSError as e:
        stage("hostname-failed", level="warn", error=e.strerror)
    from k4s.boot import netconf, power

    iface, ip = netconf.setup(cfg, paths.run)
    if not cfg.node_ip:
        cfg = config.replace(cfg, node_ip=ip, interface=iface)
    buttons = power.watch_power_button(lambda: os.kill(os.getpid(), signal.SIGPWR))
    stage("power-button", devices=len(buttons))
    preloading.join()  # no import half done in the thread when the node forks its first child
    from k4s.cluster.server import run_server

    sig = run_server(cfg, control_plane_only=False, stop_signals=tuple(power.SIGNAL_ACTION))
    return power.SIGNAL_ACTION.get(signal.Signals(sig), "poweroff") if sig else cfg.on_failure


def on_failure_action() -> str:
    """The configured failure action, if the config can be read at all."""
    try:
        from k4s import config

        return config.load(cmdline=config.read_proc_cmdline(), join_secret=str(layout.JOIN_SECRET)).on_failure
    except Exception:
        return "poweroff"


def run_pid1(name: str, body: Callable[[], str], failed: str) -> None:
    """PID 1's frame, for init and stage 1: an explicit environment, body() for the power action
    to end with, and any failure as one line with a hint, then k4s.on-failure. Never returns,
    never lets the kernel panic (it would if PID 1 exited)."""
    os.environ.clear()
    os.environ.update({"PATH": layout.PATH, "HOME": "/root", "TERM": "linux", "LANG": "C.UTF-8"})
    action = "poweroff"
    try:
        log.console(f"k4s {name}: starting (kernel {os.uname().release}, {log.uptime():.2f}s since boot)")
        log.record(name, events.START, kernel=os.uname().release)
        action = body()
    except K4sError as e:
        log.console(e.render(f"k4s {name}"))
        log.record(name, events.FATAL, level="error", error=e.message, hint=e.hint)
        action = on_failure_action()
        log.console(f"k4s {name}: {failed}; will {action} (k4s.on-failure=poweroff|reboot|halt)")
        time.sleep(1)
    except BaseException as e:  # noqa: BLE001 - PID 1 must never die with a traceback
        import traceback

        traceback.print_exc()
        log.console(f"k4s {name}: error: unexpected {type(e).__name__}: {e} (hint: this is a bug; "
                    "the traceback above says where)")
        log.record(name, events.FATAL, level="error", error=f"unexpected {type(e).__name__}: {e}")
        action = on_failure_action()
    finally:
        shutdown(action)


def main() -> None:
    """PID 1 of the appliance. Never returns."""
    run_pid1("init", boot, "fatal error")


def shutdown(action: str) -> None:
    from k4s.boot import datadisk, power
    from k4s.sys.process import kill_all

    try:
        kill_all()
    except Exception:
        pass
    try:
        datadisk.release()
    except Exception:
        pass
    try:
        power.final(action)
    except OSError as e:
        log.console(f"k4s init: reboot({action}) failed: {e.strerror}")
    while True:  # PID 1 must not exit: the kernel would panic
        time.sleep(3600)


def run_as_init() -> int:
    if os.getpid() != 1:
        raise K4sError("init must run as PID 1 (the kernel starts /init)",
                       hint="to run the node on a host, use `k4s server`")
    main()
    sys.exit(0)  # not reached
