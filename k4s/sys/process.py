"""Processes: spawn with a log file, renice every thread, reap, a function in a forked child,
PID 1's last kill_all, and a program from the image run to its end during the boot.

This is the one module that calls waitpid. The supervisor reaps through `reaped()` and
hands each exit status to whoever waits on it (its run_command and call_in_child);
`call_in_child` here (before the supervisor runs) and `kill_all` (after it stopped)
wait for their own children. So no exit status is ever stolen.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from k4s.errors import K4sError


def run_tool(argv: list[str], what: str, timeout: float, stdin: bytes = b"", owner: str = "data disk",
             slow_hint: str = "check the disk", fail_hint: str = "check the disk") -> None:
    """A program from the image, to its end, with `stdin` as its input (a key never goes in an
    argument or a file), before the supervisor reaps: a failure is one line, "OWNER: WHAT failed:"
    and the program's last line of stderr, with a hint. For init's boot steps (formatting a disk)."""
    try:
        r = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    except FileNotFoundError:
        raise K4sError(f"{owner}: {argv[0]} is not in the image", hint="rebuild the image (make image)") from None
    except subprocess.TimeoutExpired:
        raise K4sError(f"{owner}: {what} took over {timeout:.0f}s", hint=slow_hint) from None
    if r.returncode != 0:
        err = (r.stderr.decode(errors="replace").strip().splitlines() or [f"exit status {r.returncode}"])[-1]
        raise K4sError(f"{owner}: {what} failed: {err}", hint=fail_hint)


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> int:
    """Start argv in a session of its own, stdin /dev/null, stdout and stderr appended to log_path; its pid."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                   (os.POSIX_SPAWN_DUP2, fd, 1), (os.POSIX_SPAWN_DUP2, fd, 2)]
        try:
            # setsid: a Ctrl-C on the terminal reaches us, and we stop children in order.
            return os.posix_spawn(argv[0], argv, env, file_actions=actions, setsid=True)
        except OSError as e:
            raise K4sError(f"cannot start {argv[0]}: {e.strerror}",
                           hint="check the component is built and executable (make components)") from e
    finally:
        os.close(fd)



def reaped() -> Iterator[tuple[int, int]]:
    """(pid, exit code) of every child that has exited, without blocking."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        yield pid, os.waitstatus_to_exitcode(status)


def renice(pid: int | None, nice: int) -> None:
    """Set the nice value of every thread of pid. On Linux nice is per thread, and
    setpriority(PRIO_PROCESS, pid) reaches only the main one: a Go program's worker
    threads (containerd unpacking a layer) would keep running at full priority."""
    if pid is None:
        return
    try:
        tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
    except OSError:
        tids = [pid]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass  # the thread (or process) is gone


def fork_reply(fn: Callable[[], Any]) -> tuple[int, int]:
    """Fork a child that runs fn() and writes its JSON reply to a pipe; (pid, read end).
    The child only imports, computes, and writes (no lock another thread might hold)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns
        code = 0
        try:
            os.close(r)
            reply: dict[str, Any] = {"result": fn()}
        except K4sError as e:
            reply = {"error": e.message, "hint": e.hint}
        except BaseException as e:  # noqa: BLE001 - reported to the parent, which raises it
            reply = {"error": f"{type(e).__name__}: {e}", "hint": "this is a bug in k4s; please report it"}
        try:
            with os.fdopen(w, "w") as f:
                json.dump(reply, f)
        except BaseException:  # noqa: BLE001
            code = 1
        os._exit(code)
    os.close(w)
    return pid, r


def read_reply(pid: int, r: int, timeout: float, wait: Callable[[], int]) -> Any:
    """The child's result, or its K4sError raised here; killed at the timeout."""
    raw, end = b"", time.monotonic() + timeout
    with os.fdopen(r, "rb") as f:
        while time.monotonic() < end and select.select([f], [], [], end - time.monotonic())[0]:
            chunk = f.read1(65536)
            if not chunk:
                break
            raw += chunk
        else:
            os.kill(pid, signal.SIGKILL)
    code = wait()
    try:
        reply = json.loads(raw)
    except ValueError:
        raise K4sError(f"the child died ({code})", hint="run the step on its own to see its error") from None
    if "error" in reply:
        raise K4sError(reply["error"], hint=reply.get("hint"))
    return reply["result"]


def call_in_child(fn: Callable[[], Any], timeout: float) -> Any:
    """fn() in a forked child; its JSON-able result, or its K4sError raised here.

    For a one-off job whose imports should not stay in this long-lived process (PID 1
    never imports cryptography). Before the supervisor runs; once it does, use
    Supervisor.call_in_child, whose reaper hands the exit status over."""
    pid, r = fork_reply(fn)
    return read_reply(pid, r, timeout, lambda: os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))


def kill_all(grace: float = 3.0) -> None:
    """As PID 1 at shutdown: every other process gets TERM, a grace period, then KILL; all reaped."""
    try:
        os.kill(-1, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
