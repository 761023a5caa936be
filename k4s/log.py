"""One line per event: `[  12.34] component=etcd event=ready after=1.92s`.

Lines go to stderr (the console, on the appliance) and to <run-dir>/log/k4s.log.
The time in brackets is seconds since the kernel started (/proc/uptime), so
the appliance's boot timeline reads straight off the console.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
_lock = threading.Lock()
_file: TextIO | None = None
_level = LEVELS["info"]


def uptime() -> float:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def setup(log_dir: Path | None, level: str = "info") -> None:
    global _file, _level
    _level = LEVELS.get(level, 20)
    if log_dir is not None:
        log_dir.mkdir(parents=True, exist_ok=True)
        _file = open(log_dir / "k4s.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.2f}s"
    s = str(v)
    return f'"{s}"' if (" " in s or not s) else s


def event(component: str, what: str, /, *, level: str = "info", **fields: Any) -> None:
    if LEVELS.get(level, 20) < _level:
        return
    parts = [f"component={component}", f"event={what}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    console(f"[{uptime():8.2f}] " + " ".join(parts))


def console(text: str) -> None:
    """One line to the console (stderr) and to k4s.log."""
    with _lock:
        print(text, file=sys.stderr, flush=True)
        if _file is not None:
            try:
                _file.write(text + "\n")
            except OSError:
                pass


def tail(path: Path, lines: int = 3) -> str:
    """The last lines of a log, joined with ' | ', for an error message."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    tail = text.strip().splitlines()
    # A Go program that panicked ends with goroutine frames; its message is the line to show.
    crash = [ln for ln in tail if ln.startswith(("panic: ", "fatal error: "))]
    return crash[-1].strip() if crash else " | ".join(ln.strip() for ln in tail[-lines:])
