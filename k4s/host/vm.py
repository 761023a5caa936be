"""Boot the appliance in QEMU from the build host: seed, start, wait for Ready, power off.

The seed is a small extra initramfs segment (the kernel unpacks concatenated
segments in order) holding nothing secret: the operator CA's certificate
(the node trusts it for client certificates) and the manifests to
auto-deploy. The node makes its own keys and CAs at boot and prints its CA's
pin; the host checks the CA it is served against that pin before it writes
out/kubeconfig (k4s.host.operator). The same seed works for PXE (iPXE loads
several initrds) and for a LinuxBoot payload.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from k4s import events as ev
from k4s import layout, log
from k4s.cluster import certs
from k4s.config import KEYS
from k4s.errors import K4sError
from k4s.events import Event
from k4s.host.netboot import UEFI_IMAGE
from k4s.host.operator import NotYet, Operator
from k4s.host.operator import write_kubeconfig as write_pinned_kubeconfig
from k4s.image import cpio

METRICS_PORT = KEYS["metrics-port"].default  # the node's metrics endpoint
EVENTS_PORT = "ttyS1"  # the guest's second serial port: its events as JSON lines (log.py)
# The guest kernel reporting that it stopped making progress: a soft lockup (a CPU not
# scheduling for 20 s) or an RCU stall. It does not come back from these under TCG, so
# waiting on for Ready only wastes the timeout. loglevel=5 puts the kernel's warnings (the
# registers and stacks that follow) on the console; `quiet` alone would hide them.
LOCKUP_MARKS = ("watchdog: BUG: soft lockup", "rcu: INFO: rcu_preempt self-detected stall",
                "rcu: INFO: rcu_preempt detected stalls")
KERNEL_DIAGNOSTICS = "loglevel=5 softlockup_all_cpu_backtrace=1"
ESP_SLOT = 0x10  # the PCI slot of the first ESP disk (VM.efi): the firmware names each by it
LOCKUP_TRACE_WAIT = 15  # seconds for the other CPUs' backtraces to reach the console
# what every harness boot's kernel is told: the console, diagnostics, no reboot loop, events
CMDLINE = f"console=ttyS0 quiet {KERNEL_DIAGNOSTICS} panic=-1 k4s.events={EVENTS_PORT}"


# The CPU a TCG guest sees: a named model, not "max". Six boots of each, interleaved on
# 2026-12-06, reached node Ready sooner as EPYC in every pair (median 47.0 s against 54.0; the
# guest kernel's start 4.1 s against 4.8). Less the features TCG does not emulate, which it
# would drop with a warning each.
TCG_CPU = "EPYC,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,-nrip-save,-xsavec"


class GuestLockup(K4sError):
    """The guest kernel locked up (see LOCKUP_MARKS); the message carries the stacks it printed."""


class LockupWarning(UserWarning):
    """A guest kernel lockup that a second boot got past."""


EXIT = "exit"  # wait for QEMU to exit by itself (-no-reboot: a poweroff or a reboot ends it)


class Console(NamedTuple):
    """Wait until the console shows this text: for what runs before k4s, which has no events
    (the firmware's boot manager)."""
    text: str


Until = Event | Console | str  # an event from k4s.events, a console text, or EXIT


@dataclass
class Boot:
    """One boot of a VM: QEMU's process and the event it was waited for."""
    vm: VM
    proc: subprocess.Popen[bytes]
    reached: dict[str, Any]  # the awaited event's fields, or {"rc": QEMU's status} for EXIT

    @property
    def node(self) -> str:
        return str(self.reached.get("node", ""))

    def console(self) -> str:
        return self.vm.console.read_text(errors="replace")

    def events(self, which: Event | None = None) -> list[dict[str, Any]]:
        got = log.read_events(self.vm.events)
        return [e for e in got if which is None or which.matches(e)]


def lockup_report(console: str) -> str | None:
    """The lockup's first line and the functions on the stacks the kernel printed after it
    (RIP and Call Trace lines), or None when the console shows none."""
    at = min((i for i in (console.find(m) for m in LOCKUP_MARKS) if i >= 0), default=-1)
    if at < 0:
        return None
    lines = console[at:].splitlines()
    frames: list[str] = []
    for ln in lines[1:]:
        body = ln.split("] ", 1)[-1].strip().removeprefix("RIP: 0010:")
        token = body.split(" ", 1)[0]  # "fn+0x1f5/0x250", maybe followed by "[module]"
        if "+0x" in token and "/0x" in token and (name := token.split("+0x")[0]) not in frames:
            frames.append(name)
    head = lines[0].split("] ", 1)[-1].strip()
    return head + (f"; stacks: {' < '.join(frames[:24])}" if frames else "")


def state(stat: Path) -> str:
    """A process's or thread's state letter from its /proc stat file ("R", "S", "Z"...); "" if gone."""
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return ""


def alive(pid: int) -> bool:
    """The process exists and one of its threads is not a zombie. The main thread of a
    QEMU killed -9 can be a zombie while another thread is still exiting and holding the
    process's files: its forwarded ports are free only when every thread is gone."""
    return any(state(t / "stat") not in ("", "Z", "X") for t in Path(f"/proc/{pid}/task").glob("*"))


@dataclass
class VM:
    out: Path                     # out/ : console.log, qmp.sock, kubeconfig, cluster/
    kernel: Path
    initrd: Path
    memory: int = 1024
    cpus: int = 2
    port: int = 6443              # host port forwarded to the apiserver
    append: str = ""
    manifests: list[Path] = field(default_factory=list)
    operator_dir: Path | None = None  # default: out/operator
    pxe: Path | None = None           # boot from the NIC: QEMU's TFTP serves this dir's boot.ipxe
    seeded: bool = True               # append the seed to the initrd (not for a stage 1)
    ca_hash: str = ""                 # the node's CA pin, read from its events
    lan_ports: tuple[int, ...] = ()   # the first VM of a lan: loopback ports other VMs connect to
    lan_connect: int = 0              # a VM that joins a lan: the first VM's port (no user network of its own)
    lan_mgmt: bool = False            # with lan_connect: a user-network NIC too, first (eth0: `mac`), the lan second
    mgmt_port: bool = False           # with lan_mgmt: `port` forwarded to it, as a lone VM's (a server on a switch)
    mac: str = ""                     # the NIC's MAC (VMs on one lan need their own; the node name derives from it)
    metrics_port: int = 0             # a host port forwarded to the node's metrics endpoint (10270)
    metrics_guest: str = ""           # ... on this guest address (the node IP, when it is not the user NIC's)
    disk: Path | None = None          # a qcow2 data disk (/dev/vdb in the guest; boot with k4s.data=...)
    disk_size: str = "4G"             # the size `ensure_disk` creates it with
    join_secret: Path | None = None   # a worker's join segment (or its join line), appended last to the initrd
    efi: tuple[Path, ...] = ()        # boot UEFI firmware (OVMF), not the kernel: one ESP disk per image, in order
    uefi: bool = False                # OVMF without `efi`; with `pxe`, the NIC boots first (DIR/stage1.efi, TFTP)
    secure_boot: bool = False         # under UEFI: OVMF's Secure Boot build, starting from `uefi_vars`
    uefi_vars: Path | None = None     # under UEFI: the variable store to copy (its enrolled keys); OVMF's blank one
    tpm: bool = False                 # a TPM 2.0 (swtpm, its state in out/tpm) that stage 1 measures into
    swtpm: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def console(self) -> Path:
        return self.out / "console.log"

    @property
    def events(self) -> Path:
        return self.out / "events.jsonl"

    @property
    def qmp(self) -> Path:
        return self.out / "qmp.sock"

    @property
    def pidfile(self) -> Path:
        return self.out / "qemu.pid"

    @property
    def kubeconfig(self) -> Path:
        return self.out / "kubeconfig"

    # --- the seed ----------------------------------------------------------------------

    @property
    def operator(self) -> Operator:
        return Operator(self.operator_dir or self.out / "operator")

    def seed(self) -> bytes:
        """A zstd cpio segment: the operator CA's certificate, and any manifests to auto-deploy.
        Public: no key of any kind."""
        self.operator.ensure()
        node = layout.Paths.of(layout.DATA_DIR, layout.RUN_DIR)
        t = cpio.Tree()
        t.data(layout.member(node.pki / f"{certs.OPERATOR_CA}.crt"), self.operator.ca_crt.read_bytes(), "base", 0o644)
        for m in self.manifests:
            t.data(layout.member(node.manifests / m.name), m.read_bytes(), "base", 0o644)
        for e in t.entries.values():
            if stat.S_ISDIR(e.mode) and e.name.endswith("pki"):
                e.mode = stat.S_IFDIR | 0o700
        return cpio.compress(cpio.bytes_of(t.segment("base")), "zstd", 3)

    def join_segment(self) -> bytes:
        """The machine's join secret as an initrd segment: the file as `k4s token create --segment`
        wrote it, or a join line (k4s.token=...) wrapped into one; checked before QEMU starts."""
        from k4s.cluster import joinsecret

        try:
            raw = self.join_secret.read_bytes()  # type: ignore[union-attr]
        except OSError as e:
            raise K4sError(f"cannot read the join secret {self.join_secret}: {e.strerror}",
                           hint="make it with `k4s token create --segment FILE`") from None
        if raw.startswith(cpio.MAGIC):
            return raw
        return joinsecret.segment(joinsecret.words(raw.decode("utf-8", errors="replace")))

    def write_kubeconfig(self) -> None:
        """The operator's kubeconfig for the forwarded port, trusting the node's CA once it matches the pin."""
        if not self.ca_hash:
            raise K4sError("the node's CA pin was not seen in its events", hint=f"see {self.events}")
        end = time.monotonic() + 60
        while True:
            try:
                return write_pinned_kubeconfig(self.kubeconfig, "127.0.0.1", self.port, self.ca_hash, self.operator)
            except NotYet:
                if time.monotonic() > end:
                    raise
                time.sleep(1)

    # --- QEMU ----------------------------------------------------------------------------

    def argv(self) -> list[str]:
        qemu = shutil.which("qemu-system-x86_64")
        if not qemu:
            raise K4sError("qemu-system-x86_64 not found", hint="run `make setup` (apt-get install qemu-system-x86)")
        # TCG by default: a /dev/kvm node can exist where KVM does not work (nested hosts).
        accel = os.environ.get("K4S_ACCEL", "tcg")
        netdev = f"user,id=n0,hostfwd=tcp:127.0.0.1:{self.port}-:6443"  # to the first DHCP address
        if self.lan_only:
            netdev = "user,id=n0"  # a worker's way out to the host's services: it forwards nothing
        elif self.metrics_port:
            netdev += f",hostfwd=tcp:127.0.0.1:{self.metrics_port}-{self.metrics_guest}:{METRICS_PORT}"
        if self.booting_uefi:
            boot = self.firmware()
            if self.pxe is not None:  # the firmware's own network boot: DHCP names the UKI, TFTP serves it
                netdev += f",tftp={self.pxe},bootfile={UEFI_IMAGE}"
        elif self.pxe is not None:
            # no kernel given: SeaBIOS boots the NIC's iPXE ROM, whose DHCP answer names boot.ipxe
            boot = ["-boot", "n"]
            netdev += f",tftp={self.pxe},bootfile=boot.ipxe"
        else:
            boot_initrd = self.out / "boot-initrd.img"  # 0600: a worker's holds its join secret
            boot_initrd.unlink(missing_ok=True)
            with open(os.open(boot_initrd, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
                with open(self.initrd, "rb") as src:
                    shutil.copyfileobj(src, f, 1 << 20)
                if self.seeded:
                    f.write(self.seed())
                if self.join_secret is not None:
                    f.write(b"\0" * (-f.tell() % 4))
                    f.write(self.join_segment())
            append = f"{CMDLINE} {self.append}".strip()
            boot = ["-kernel", str(self.kernel), "-initrd", str(boot_initrd), "-append", append]
        smm = ",smm=on" if self.booting_uefi and self.secure_boot else ""
        return [
            qemu, "-machine", f"q35{smm},accel={accel}", "-cpu", TCG_CPU if accel == "tcg" else "host",
            "-smp", str(self.cpus), "-m", str(self.memory), *boot,
            "-display", "none", "-serial", f"file:{self.console}", "-serial", f"file:{self.events}",
            "-monitor", "none",
            "-qmp", f"unix:{self.qmp},server,nowait",
            *self.network(netdev),
            *(["-drive", f"file={self.disk},if=virtio,format=qcow2,discard=unmap"] if self.disk else []),
            *(["-chardev", f"socket,id=chrtpm,path={self.tpm_socket}", "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
               "-device", "tpm-tis,tpmdev=tpm0"] if self.tpm else []),
            "-no-reboot", "-pidfile", str(self.pidfile),
        ]

    @property
    def tpm_socket(self) -> Path:
        return self.out / "tpm" / "swtpm.sock"

    def start_tpm(self) -> None:
        """swtpm for this machine (a TPM 2.0 its firmware starts up), gone with QEMU's connection."""
        swtpm = shutil.which("swtpm")
        if not swtpm:
            raise K4sError("swtpm not found", hint="run `make setup` (apt-get install swtpm)")
        self.tpm_socket.parent.mkdir(parents=True, exist_ok=True)
        self.tpm_socket.unlink(missing_ok=True)
        self.swtpm = subprocess.Popen(
            [swtpm, "socket", "--tpm2", "--tpmstate", f"dir={self.tpm_socket.parent}", "--terminate",
             "--ctrl", f"type=unixio,path={self.tpm_socket}"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=open(self.out / "swtpm.stderr", "wb"),
            start_new_session=True)
        end = time.monotonic() + 10
        while not self.tpm_socket.exists():
            if self.swtpm.poll() is not None or time.monotonic() > end:
                raise K4sError("swtpm did not start", hint=f"see {self.out / 'swtpm.stderr'}")
            time.sleep(0.05)

    @property
    def booting_uefi(self) -> bool:
        return bool(self.efi) or self.uefi

    def firmware(self) -> list[str]:
        """UEFI: OVMF's code (with Secure Boot, the build that keeps its variables behind SMM, so
        the guest cannot write around the firmware), a fresh copy of the variable store, and one
        read-only ESP per image, booted in that order, after the NIC when there is a pxe
        directory: the firmware tries the next when it refuses one, and stops at "No bootable
        option" when it refuses all."""
        from k4s.host import secureboot

        code = secureboot.OVMF_CODE_SECURE if self.secure_boot else secureboot.OVMF_CODE
        template = self.uefi_vars or secureboot.OVMF_VARS
        for p, hint in ((code, "run `make setup` (it installs ovmf)"), (template, "run `make stage1`")):
            if not p.is_file():
                raise K4sError(f"{p} not found", hint=hint)
        store = self.out / "uefi-vars.fd"
        shutil.copyfile(template, store)
        args = ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={code}",
                "-drive", f"if=pflash,format=raw,unit=1,file={store}"]
        if self.secure_boot:
            args = ["-global", "driver=cfi.pflash01,property=secure,value=on", *args]
        first = 2 if self.pxe is not None else 1  # the NIC is 1 (nic_options)
        for i, image in enumerate(self.efi):
            disk = secureboot.esp(image, self.out / f"esp{i}.img")
            args += ["-drive", f"if=none,id=esp{i},format=raw,readonly=on,file={disk}",
                     "-device", f"virtio-blk-pci,drive=esp{i},addr={ESP_SLOT + i:#x},bootindex={first + i}"]
        return args

    def nic_options(self, user: bool = False) -> str:
        """A NIC's extra -device options. Under UEFI, no iPXE option ROM (its EFI driver would
        take every NIC): the firmware's own PXE boots the user-network NIC (a UEFI NIC's way),
        first when there is a pxe directory."""
        if not self.booting_uefi:
            return ""
        return ",romfile=" + (",bootindex=1" if user and self.pxe is not None else "")

    @property
    def lan_only(self) -> bool:
        """Nothing forwarded from the host: a VM that joins a lan, unless its management NIC has a port."""
        return bool(self.lan_connect) and not (self.lan_mgmt and self.mgmt_port)

    def network(self, user: str) -> list[str]:
        """NICs. Alone: one, on QEMU's user network (DHCP, the host's forwarded port). The first
        VM of a lan keeps that one (boot it with k4s.mgmt-interface=eth0) and gets a second, in a
        QEMU hub with one listening socket per other VM: the hub is the lan's switch. A VM that
        joins has one NIC, on the lan. The user network stays off the lan: it would take every
        frame between VMs for its own outbound traffic. A joining VM with lan_mgmt has a user
        NIC first (the host's services, e.g. its payload server) and its lan NIC second, as the
        first VM does (its lan MAC is `mac` with 0x78 as its fifth byte)."""
        mac = f",mac={self.mac}" if self.mac else ""
        if self.lan_connect:
            first = ["-netdev", user, "-device", f"virtio-net-pci,netdev=n0{mac}{self.nic_options(user=True)}"] \
                if self.lan_mgmt else []
            lan_mac = f",mac={self.mac[:12]}78{self.mac[14:]}" if self.mac and self.lan_mgmt else mac
            return [*first, "-netdev", f"socket,id=lan,connect=127.0.0.1:{self.lan_connect}",
                    "-device", f"virtio-net-pci,netdev=lan{lan_mac}{self.nic_options()}"]
        out = ["-netdev", user, "-device", f"virtio-net-pci,netdev=n0{mac}{self.nic_options(user=True)}"]
        for i, port in enumerate(self.lan_ports):
            out += ["-netdev", f"socket,id=lan{i},listen=127.0.0.1:{port}",
                    "-netdev", f"hubport,id=hub-lan{i},hubid=0,netdev=lan{i}"]
        if self.lan_ports:
            out += ["-netdev", "hubport,id=hub-nic,hubid=0", "-device", f"virtio-net-pci,netdev=hub-nic{self.nic_options()}"]
        return out

    def ensure_disk(self) -> None:
        """Create the data disk (a sparse, blank qcow2) if it is not there."""
        if self.disk is None or self.disk.exists():
            return
        img = shutil.which("qemu-img")
        if not img:
            raise K4sError("qemu-img not found", hint="run `make setup` (apt-get install qemu-utils)")
        self.disk.parent.mkdir(parents=True, exist_ok=True)
        r = subprocess.run([img, "create", "-q", "-f", "qcow2", str(self.disk), self.disk_size],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise K4sError(f"qemu-img create {self.disk}: {r.stderr.strip()}", hint="check the path and --disk-size")

    def start(self) -> subprocess.Popen[bytes]:
        if self.booting_uefi:
            needed = [*self.efi, *([self.pxe / UEFI_IMAGE] if self.pxe is not None else [])]
        else:
            needed = [self.kernel, self.initrd] if self.pxe is None else [self.pxe / "boot.ipxe"]
        for p in needed:
            if not p.exists():
                raise K4sError(f"{p} not found", hint="run `make stage1`" if self.booting_uefi else "run `make image`")
        if self.running():
            raise K4sError(f"a VM is already running (pid {self.pidfile.read_text().strip()})",
                           hint="stop it with `make down`")
        for port in () if self.lan_only else (self.port, self.metrics_port):  # a lan-only VM forwards nothing
            if not port:
                continue
            with socket.socket() as s:
                # as QEMU's hostfwd binds: the last session's TIME_WAIT sockets do not own the port
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    flag = "--port" if port == self.port else "--metrics-port"
                    raise K4sError(f"host port {port} is in use", hint=f"free it, or pass {flag}") from None
        self.out.mkdir(parents=True, exist_ok=True)
        self.ensure_disk()
        self.console.write_bytes(b"")
        self.events.write_bytes(b"")
        argv = self.argv()
        if self.tpm:
            self.start_tpm()
        return subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=open(self.out / "qemu.stderr", "wb"), start_new_session=True)

    def running(self) -> int | None:
        try:
            pid = int(self.pidfile.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if alive(pid) else None  # a QEMU killed -9 leaves its pidfile (and maybe a zombie)

    def wait(self, proc: subprocess.Popen[bytes] | None, until: Until = ev.NODE_READY, timeout: float = 900,
             echo: bool = False) -> dict[str, Any]:
        """Follow the boot until the event `until` (the event's fields) or, with until="exit",
        until QEMU exits by itself ({"rc": its status}). Raises K4sError on a fatal error
        (unless waiting for the exit), on an exit before the event, or at the timeout, and
        GuestLockup when the guest kernel locks up. The guest's events (JSON lines on its
        second serial port) say what happened; the console is echoed for people."""
        end = time.monotonic() + timeout
        pos = seen = 0
        what = ("QEMU's exit" if until == EXIT else f"{until.text!r} on the console" if isinstance(until, Console)
                else f"{until.component} {until.event}")  # type: ignore[union-attr]
        while time.monotonic() < end:
            text = self.console.read_text(errors="replace") if self.console.exists() else ""
            if lockup_report(text):
                self.raise_lockup()
            if isinstance(until, Console) and until.text in text:
                return {"console": until.text}
            if echo:
                new, pos = text[pos:], len(text)
                for line in new.splitlines():
                    if "component=" in line or line.startswith("k4s"):
                        print(line, flush=True)
            got = log.read_events(self.events)
            for e in got[seen:]:
                if ev.CA.matches(e):
                    self.ca_hash = str(e.get("hash"))
                if isinstance(until, Event) and e.get("event") == ev.FATAL:
                    hint = f" (hint: {e['hint']})" if e.get("hint") else ""
                    raise K4sError(f"the appliance failed: {e.get('error')}{hint}", hint=f"see {self.console}")
                if isinstance(until, Event) and until.matches(e):
                    return e
            seen = len(got)
            if proc is not None and proc.poll() is not None:
                if until == EXIT:
                    return {"rc": proc.returncode}
                raise K4sError(f"QEMU exited ({proc.returncode}) before {what}",
                               hint=f"see {self.console} and {self.out / 'qemu.stderr'}")
            time.sleep(0.5)
        raise K4sError(f"no {what} within {timeout:.0f}s", hint=f"see {self.console}")

    def boot(self, until: Until = ev.NODE_READY, timeout: float = 900, echo: bool = False,
             again_on_lockup: bool = True) -> Boot:
        """Start QEMU and wait for `until` (see wait). A guest kernel lockup (GuestLockup: the
        console shows a soft lockup or an RCU stall under TCG, never a k4s failure) is a
        LockupWarning, with the stacks the kernel printed, and the machine boots once more; the
        locked console is kept as console-lockup.log. Any other failure, or a second lockup,
        raises, with QEMU stopped."""
        return self.follow(self.start(), until, timeout, echo, again_on_lockup)

    def follow(self, proc: subprocess.Popen[bytes], until: Until = ev.NODE_READY, timeout: float = 900,
               echo: bool = False, again_on_lockup: bool = True) -> Boot:
        """The rest of `boot` for a machine already started (machines booted side by side):
        wait for `until`, and boot once more after a guest kernel lockup."""
        try:
            return Boot(self, proc, self.wait(proc, until, timeout, echo))
        except BaseException as e:
            self.pull_plug()
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
            if not (again_on_lockup and isinstance(e, GuestLockup)):
                raise
            self.console.replace(self.out / "console-lockup.log")
            warnings.warn(f"{e.message}; booting {self.out.name} once more", LockupWarning, stacklevel=2)
        return self.boot(until, timeout, echo, again_on_lockup=False)

    @contextmanager
    def booted(self, until: Until = ev.NODE_READY, timeout: float = 900, echo: bool = False) -> Iterator[Boot]:
        """`with vm.booted(until=...) as b:` the machine booted to `until` (see boot). On the way
        out a Ready node gets the power button (QEMU killed if it does not stop); a boot stopped
        at an earlier event has nothing to stop cleanly yet (init watches the button only once
        its node starts): QEMU is killed."""
        b = self.boot(until, timeout, echo)
        try:
            yield b
        finally:
            self.stop(b.proc, clean=until == ev.NODE_READY)

    def stop(self, proc: subprocess.Popen[bytes] | None = None, timeout: float = 120, clean: bool = True) -> None:
        """Power off if running (the power button, then kill; or at once, with clean=False);
        reap QEMU's process."""
        if self.running():
            if clean:
                self.power_off(timeout)
            else:
                self.pull_plug()
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
            proc.wait(30)
        if self.swtpm is not None:  # it ends with QEMU's connection; not if QEMU never made one
            if self.swtpm.poll() is None:
                self.swtpm.kill()
            self.swtpm.wait(30)
            self.swtpm = None

    def raise_lockup(self) -> None:
        """Give the kernel a moment to print every CPU's stack, then raise GuestLockup with them."""
        time.sleep(LOCKUP_TRACE_WAIT)
        report = lockup_report(self.console.read_text(errors="replace"))
        raise GuestLockup(f"the guest kernel locked up: {report}", hint=f"see {self.console}")

    def qmp_command(self, command: str) -> None:
        with socket.socket(socket.AF_UNIX) as s:
            s.settimeout(10)
            s.connect(str(self.qmp))
            f = s.makefile("rw")
            f.readline()  # greeting
            for cmd in ("qmp_capabilities", command):
                f.write(json.dumps({"execute": cmd}) + "\n")
                f.flush()
                f.readline()

    def pull_plug(self) -> None:
        """A power cut: QEMU killed at once, nothing flushed by the guest."""
        pid = self.running()
        if pid is None:
            return
        os.kill(pid, signal.SIGKILL)
        end = time.monotonic() + 30
        while alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        self.pidfile.unlink(missing_ok=True)

    def power_off(self, timeout: float = 120) -> bool:
        """ACPI power button, then wait for QEMU to exit; True if the guest powered itself off."""
        pid = self.running()
        if pid is None:
            return True
        try:
            self.qmp_command("system_powerdown")
        except OSError:
            pass
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            # QEMU removes its pidfile on the way out: wait for the process itself,
            # so its forwarded ports are free when we return
            if self.running() is None and not alive(pid):
                return True
            time.sleep(0.5)
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        return False
