"""The one module that talks to libc through ctypes: mount, umount, finit_module,
kexec_file_load, reboot, sethostname, prctl, swapon, mmap (to lock a file in RAM). Every call raises OSError with errno on failure."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform

_libc: ctypes.CDLL | None = None

# finit_module(2) has no libc wrapper; its syscall number depends on the architecture.
SYS_FINIT_MODULE = {"x86_64": 313, "aarch64": 273}
SYS_KEXEC_FILE_LOAD = {"x86_64": 320, "aarch64": 294}
KEXEC_FILE_NO_INITRAMFS = 4
MODULE_INIT_COMPRESSED_FILE = 4

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_MOVE = 8192
MS_REC = 16384
MS_SHARED = 1 << 20
MNT_DETACH = 2

RB_AUTOBOOT = 0x01234567
RB_HALT_SYSTEM = 0xCDEF0123
RB_POWER_OFF = 0x4321FEDC
RB_KEXEC = 0x45584543

SWAP_FLAG_PREFER = 0x8000
PROT_READ, MAP_SHARED, MAP_LOCKED, MAP_POPULATE = 1, 1, 0x2000, 0x8000

PR_SET_CHILD_SUBREAPER = 36
PR_SET_PDEATHSIG = 1


def libc() -> ctypes.CDLL:
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    return _libc


def _check(rc: int, what: str) -> int:
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


def mount(source: str, target: str, fstype: str, flags: int = 0, data: str = "") -> None:
    _check(libc().mount(source.encode(), target.encode(), fstype.encode(), ctypes.c_ulong(flags),
                        data.encode() if data else None), f"mount {target}")


def umount(target: str, flags: int = 0) -> None:
    _check(libc().umount2(target.encode(), flags), f"umount {target}")


def finit_module(fd: int, params: str = "", flags: int = 0) -> None:
    nr = _syscall_nr(SYS_FINIT_MODULE, "finit_module")
    _check(libc().syscall(ctypes.c_long(nr), ctypes.c_int(fd), ctypes.c_char_p(params.encode()),
                          ctypes.c_int(flags)), "finit_module")


def _syscall_nr(table: dict[str, int], name: str) -> int:
    nr = table.get(platform.machine())
    if nr is None:
        raise OSError(38, f"{name}: unsupported architecture {platform.machine()}")
    return nr


def kexec_file_load(kernel_fd: int, initrd_fd: int | None, cmdline: str) -> None:
    """Load a kernel (and initrd) for reboot(RB_KEXEC); the kernel checks the image format
    (and, with KEXEC_SIG_FORCE, its signature). The command line includes its NUL."""
    raw = cmdline.encode() + b"\0"
    flags = 0 if initrd_fd is not None else KEXEC_FILE_NO_INITRAMFS
    _check(libc().syscall(ctypes.c_long(_syscall_nr(SYS_KEXEC_FILE_LOAD, "kexec_file_load")),
                          ctypes.c_int(kernel_fd), ctypes.c_int(-1 if initrd_fd is None else initrd_fd),
                          ctypes.c_ulong(len(raw)), ctypes.c_char_p(raw), ctypes.c_ulong(flags)), "kexec_file_load")


def reboot(cmd: int) -> None:
    _check(libc().reboot(ctypes.c_int(cmd)), "reboot")


def sethostname(name: str) -> None:
    raw = name.encode()
    _check(libc().sethostname(raw, ctypes.c_size_t(len(raw))), "sethostname")


def prctl(option: int, arg2: int = 0) -> None:
    _check(libc().prctl(ctypes.c_int(option), ctypes.c_ulong(arg2), ctypes.c_ulong(0), ctypes.c_ulong(0),
                        ctypes.c_ulong(0)), "prctl")


def swapon(path: str, priority: int) -> None:
    _check(libc().swapon(path.encode(), ctypes.c_int(SWAP_FLAG_PREFER | (priority & 0x7FFF))), f"swapon {path}")


def lock_in_ram(fd: int, size: int) -> None:
    """Map a file shared, read-only and locked: its pages stay in RAM (never swapped) for as
    long as this process lives. The mapping is never unmapped."""
    mm = libc().mmap
    mm.restype, mm.argtypes = ctypes.c_void_p, [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_int, ctypes.c_long]
    addr = mm(None, size, PROT_READ, MAP_SHARED | MAP_LOCKED | MAP_POPULATE, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        err = ctypes.get_errno()
        raise OSError(err, f"mmap: {os.strerror(err)}")
