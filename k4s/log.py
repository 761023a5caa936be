"""One line per event for people, one JSON object per event for tools.

    console:  [  12.34] component=etcd event=ready after=1.92s
    data:     {"t": 12.34, "component": "etcd", "event": "ready", "after": 1.92}

Console lines go to stderr (the console, on the appliance) and to
<run-dir>/log/k4s.log. The same events go as JSON lines to <run-dir>/events.jsonl
and, on the appliance with `k4s.events=ttyS1`, to that serial port, which is
what the VM helper and the bench read: nothing scrapes the console text.
`t` is seconds since the kernel started (/proc/uptime), so the appliance's
boot timeline reads straight off either form.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections import deque
from pathlib import Path
from typing import Any, BinaryIO, TextIO

from k4s.errors import printable

LEVELS = {"debug": 10, "info": 20, "warn": 30, "error": 40}
_lock = threading.Lock()
_file: TextIO | None = None
_sinks: list[BinaryIO] = []
_early: deque[bytes] = deque(maxlen=256)  # events from before setup (init's first stages), written at setup
_level = LEVELS["info"]


def uptime() -> float:
    try:
        with open("/proc/uptime", encoding="ascii") as f:
            return float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return time.monotonic()


def setup(log_dir: Path | None, level: str = "info", events: Path | None = None,
          device: str | None = None) -> None:
    """Where lines and events go from now on; calling it again replaces (and closes) the old."""
    global _file, _level
    _level = LEVELS.get(level, 20)
    with _lock:
        for f in [_file, *_sinks]:
            if f is not None:
                try:
                    f.close()
                except OSError:
                    pass
        _file, _sinks[:] = None, []
        try:
            if log_dir is not None:
                log_dir.mkdir(parents=True, exist_ok=True)
                _file = open(log_dir / "k4s.log", "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if events is not None:
                events.parent.mkdir(parents=True, exist_ok=True)
                _sinks.append(open(events, "ab", buffering=0))  # noqa: SIM115
        except OSError as e:
            print(f"k4s: warning: cannot open the log in {log_dir}: {e.strerror}", file=sys.stderr)
        if device:
            try:
                fd = os.open(device, os.O_WRONLY | os.O_NOCTTY | os.O_CLOEXEC)
                _sinks.append(os.fdopen(fd, "wb", buffering=0))
            except OSError as e:
                print(f"k4s: warning: cannot write events to {device}: {e.strerror}", file=sys.stderr)
        if _sinks:
            for line in _early:
                _write(line)
            _early.clear()


FIELD_LIMIT = 512  # characters of one field on the console: a value from outside can be any length


def _fmt(v: Any) -> str:
    """key=value's value: quoted (JSON's escapes) when it holds a space, a quote, an '=' or any
    control character, so a value from outside (a CSR's name, a node name) cannot forge a field
    or a line."""
    if isinstance(v, float):
        return f"{v:.2f}s"
    s = str(v)[:FIELD_LIMIT]
    if not s or any(c in s for c in ' "=\\') or printable(s) != s:
        return json.dumps(s)
    return s


def _plain(v: Any) -> Any:
    if isinstance(v, float):
        return round(v, 3)
    return v if isinstance(v, int | str | bool) or v is None else str(v)


def event(component: str, what: str, /, *, level: str = "info", **fields: Any) -> None:
    """An event for people (the console line) and for tools (a JSON line)."""
    if LEVELS.get(level, 20) < _level:
        return
    t = uptime()
    parts = [f"component={component}", f"event={what}"]
    parts += [f"{k}={_fmt(v)}" for k, v in fields.items() if v is not None]
    console(f"[{t:8.2f}] " + " ".join(parts))
    _record(t, component, what, level, fields)


def record(component: str, what: str, /, *, level: str = "info", **fields: Any) -> None:
    """An event for tools only: its console line, if any, is written for people separately."""
    _record(uptime(), component, what, level, fields)


def _record(t: float, component: str, what: str, level: str, fields: dict[str, Any]) -> None:
    doc = {"t": round(t, 3), "component": component, "event": what, **({"level": level} if level != "info" else {}),
           **{k: _plain(v) for k, v in fields.items() if v is not None}}
    line = (json.dumps(doc, separators=(",", ":")) + "\n").encode()
    with _lock:
        if _sinks:
            _write(line)
        else:
            _early.append(line)


def _write(line: bytes) -> None:
    for f in _sinks:
        try:
            f.write(line)
        except OSError:
            pass


def console(text: str) -> None:
    """One line to the console (stderr) and to k4s.log; a control character in it is escaped,
    so it stays one line."""
    text = printable(text)
    with _lock:
        print(text, file=sys.stderr, flush=True)
        if _file is not None:
            try:
                _file.write(text + "\n")
            except OSError:
                pass


def read_events(path: Path) -> list[dict[str, Any]]:
    """The events a k4s wrote as JSON lines; a torn or foreign line (a serial port's noise) is skipped."""
    out = []
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return []
    for line in text.splitlines():
        line = line.strip().strip("\0")
        if line.startswith("{"):
            try:
                doc = json.loads(line)
            except ValueError:
                continue
            if isinstance(doc, dict) and "event" in doc:
                out.append(doc)
    return out


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
