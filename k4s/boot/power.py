"""Power: the actions init takes at the end, the signals that ask for them, and the power button.

Signals to PID 1 follow busybox init: SIGUSR1 halt, SIGUSR2 or SIGPWR power off,
SIGTERM reboot, SIGINT (Ctrl-Alt-Del) reboot.
"""

from __future__ import annotations

import glob
import os
import signal
import struct
import threading
from collections.abc import Callable
from pathlib import Path

from k4s import log
from k4s.sys import libc

ACTION_SIGNAL = {"poweroff": signal.SIGUSR2, "halt": signal.SIGUSR1, "reboot": signal.SIGTERM}
SIGNAL_ACTION = {signal.SIGUSR2: "poweroff", signal.SIGPWR: "poweroff", signal.SIGUSR1: "halt",
                 signal.SIGTERM: "reboot", signal.SIGINT: "reboot"}
REBOOT_CMD = {"poweroff": libc.RB_POWER_OFF, "halt": libc.RB_HALT_SYSTEM, "reboot": libc.RB_AUTOBOOT}

EV_KEY, KEY_POWER = 1, 116
EVENT = struct.Struct("llHHi")  # struct input_event on 64-bit: timeval, type, code, value


def power_button_devices() -> list[str]:
    out = []
    for name_file in sorted(glob.glob("/sys/class/input/event*/device/name")):
        try:
            if "power button" in Path(name_file).read_text().lower():
                out.append("/dev/input/" + name_file.split("/")[4])
        except OSError:
            continue
    return out


def watch_power_button(on_press: Callable[[], None]) -> list[str]:
    """A thread per ACPI power button: a press calls on_press (as the button does on Talos)."""
    devices = power_button_devices()

    def watch(dev: str) -> None:
        try:
            with open(dev, "rb", buffering=0) as f:
                while True:
                    data = f.read(EVENT.size)
                    if len(data) < EVENT.size:
                        return
                    _, _, etype, code, value = EVENT.unpack(data)
                    if etype == EV_KEY and code == KEY_POWER and value == 1:
                        log.event("init", "power-button")
                        on_press()
        except OSError as e:
            log.event("init", "power-button-lost", level="warn", device=dev, error=e.strerror)

    for dev in devices:
        threading.Thread(target=watch, args=(dev,), name="power-button", daemon=True).start()
    return devices


def final(action: str) -> None:
    """sync and reboot(2); never returns when it works."""
    os.sync()
    log.console(f"k4s: {action}")
    libc.reboot(REBOOT_CMD[action])


def request(action: str, force: bool) -> int:
    """The poweroff/reboot/halt applets: signal init, or act at once with -f."""
    from k4s.errors import K4sError

    if force:
        try:
            final(action)
        except OSError as e:
            raise K4sError(f"{action} failed: {e.strerror}", hint="run as root") from e
        return 0
    if not pid1_is_k4s():
        raise K4sError("PID 1 is not k4s init; refusing to signal it",
                       hint="use this host's own poweroff/reboot, or -f to act at once")
    try:
        os.kill(1, ACTION_SIGNAL[action])
    except PermissionError as e:
        raise K4sError(f"cannot signal init: {e.strerror}", hint="run as root") from e
    return 0


def pid1_is_k4s() -> bool:
    import sys

    try:
        return os.path.realpath("/proc/1/exe") == os.path.realpath(sys.executable) and bool(
            getattr(sys, "frozen", False))
    except OSError:
        return False
