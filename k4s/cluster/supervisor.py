"""The supervisor: starts services in dependency order, probes readiness,
restarts crashes with back-off, stops everything in reverse order.

The order is derived from what each service waits for (`after`): a service
starts once those are ready, and the stop runs the same order backwards.
What waits for what is declared once, in k4s.cluster.services.

While it runs it reaps every child (k4s.sys.process.reaped), including
orphans re-parented to it (it is PID 1 on the appliance and a child subreaper
elsewhere), and hands exit codes to whoever waits on them (`run_command`,
`call_in_child`), so no exit status is ever stolen. Spawning, renicing and
forking live in k4s.sys.process.

Three kinds of service:
  - a process: argv from a callback that also writes its config files;
  - a member of another service's process (`host`): it starts, stops and
    restarts with its host, and has its own readiness probe (the
    controller-manager inside the apiserver's process);
  - a task: a Python function run in a thread (import images, bootstrap),
    given the supervisor; it is ready when it returns, retried with back-off
    when it raises.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from k4s import log
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.sys import process

TICK = 0.1                # the loop's period while anything is starting
IDLE_TICK = 1.0           # once everything is ready: a crash is still noticed within a second
PROBE_EVERY = 0.25        # while starting
RECHECK_EVERY = 15.0      # once ready: readiness is re-probed this often (each probe is a TLS
                          # handshake; at 5 s the probes were most of k4s's idle CPU under TCG)
BACKOFF_MIN, BACKOFF_MAX = 1.0, 30.0
STABLE_AFTER = 60.0       # a run this long resets the back-off


@dataclass
class Service:
    name: str
    after: tuple[str, ...] = ()
    argv: Callable[[], list[str]] | None = None      # a process
    task: Callable[[Supervisor], None] | None = None       # or a task
    host: str | None = None                                # or a member of this service's process
    pre_stop: Callable[[Supervisor], None] | None = None   # runs before its process is sent SIGTERM
    post_stop: Callable[[Supervisor], None] | None = None  # runs once its process has ended
    probe: Callable[[], bool] | None = None
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 120.0   # during bring-up: not ready by then is fatal
    stop_timeout: float = 15.0
    max_early_exits: int = 5       # exits before first ready: then fatal

    # runtime state
    state: str = "waiting"   # waiting | starting | ready | backoff | stopping | stopped | failed
    pid: int | None = None
    restarts: int = 0
    early_exits: int = 0
    started_at: float | None = None
    first_started: float | None = None
    paused: float = 0.0  # of its bring-up, the seconds what it waits for was down (not on its deadline)
    ready_at: float | None = None
    first_ready: float | None = None  # the boot timeline: when it was ready the first time
    ever_ready: bool = False
    next_start: float = 0.0
    backoff: float = BACKOFF_MIN
    last_probe: float = 0.0
    probe_future: Future[bool] | None = None
    task_future: Future[None] | None = None
    last_exit: str = ""


class Fatal(K4sError):
    pass


def start_order(services: list[Service]) -> list[str]:
    """Every service after what it waits for (and a member after its host), otherwise in the
    order given; the stop runs this backwards."""
    by_name = {s.name: s for s in services}
    for s in services:
        unknown = set(s.after) - set(by_name)
        if unknown:
            raise ValueError(f"{s.name} waits for unknown services {sorted(unknown)}")
    order: list[str] = []
    pending = [s.name for s in services]
    while pending:
        for name in pending:
            s = by_name[name]
            if all(d in order for d in (*s.after, *([s.host] if s.host else []))):
                order.append(name)
                pending.remove(name)
                break
        else:
            raise ValueError(f"the services {sorted(pending)} wait for each other")
    return order


class Supervisor:
    def __init__(self, services: list[Service], log_dir: Path, status_path: Path | None = None) -> None:
        self.order = start_order(services)
        self.services = {n: s for n in self.order for s in services if s.name == n}
        self.log_dir = log_dir
        self.status_path = status_path
        self.t0 = time.monotonic()
        self.started = round(log.uptime(), 2)
        self.stop_requested = threading.Event()
        self.fatal: Fatal | None = None
        self.pool = ThreadPoolExecutor(max_workers=6, thread_name_prefix="k4s")
        self._waiters: dict[int, tuple[threading.Event, list[int]]] = {}
        self._spawn_lock = threading.Lock()
        self._dirty = True
        self._last_step: float | None = None  # when step() last ran: a paused bring-up clock skips the time since
        # run once at the start of a stop, while everything still runs (a worker's drain)
        self.before_stop: Callable[[], None] | None = None
        # given each component process as it starts (k4s.cluster.protect)
        self.adopt: Callable[[int], None] | None = None
        for s in services:
            if s.host is not None and (s.host not in self.services or self.services[s.host].argv is None):
                raise ValueError(f"{s.name} is hosted by {s.host!r}, which is not a process service")

    def members(self, host: Service) -> list[Service]:
        return [s for s in self.services.values() if s.host == host.name]

    def log_path(self, s: Service) -> Path:
        return self.log_dir / f"{s.host or s.name}.log"

    # --- process plumbing ----------------------------------------------------------------

    def run_command(self, argv: list[str], env: dict[str, str], log_path: Path, timeout: float = 120,
                    nice: int = 0) -> int:
        """Run a helper to completion (from a task thread); its exit code. The reaper reaps it."""
        done, box = threading.Event(), []
        with self._spawn_lock:
            pid = process.spawn(argv, env, log_path)
            self._waiters[pid] = (done, box)
            if nice:
                process.renice(pid, nice)
        if not done.wait(timeout):
            os.kill(pid, signal.SIGKILL)
            done.wait(5)
            raise K4sError(f"{os.path.basename(argv[0])} did not finish within {timeout:.0f}s",
                           hint=f"see {log_path}")
        return box[0]

    def call_in_child(self, fn: Callable[[], Any], timeout: float = 60) -> Any:
        """call_in_child from a task thread while the supervisor runs: the reaper reaps it."""
        done, box = threading.Event(), []
        with self._spawn_lock:
            pid, r = process.fork_reply(fn)
            self._waiters[pid] = (done, box)

        def wait() -> int:
            done.wait(10)
            return box[0] if box else -1

        return process.read_reply(pid, r, timeout, wait)

    def reap(self) -> None:
        for pid, code in process.reaped():
            with self._spawn_lock:
                waiter = self._waiters.pop(pid, None)
            if waiter:
                waiter[1].append(code)
                waiter[0].set()
                continue
            for s in self.services.values():
                if s.pid == pid and s.host is None:
                    self._exited(s, code)
                    for m in self.members(s):
                        self._exited(m, code)
                    break
            # anything else is an orphan we inherited: reaped, nothing more to do

    def _exited(self, s: Service, code: int) -> None:
        s.pid = None
        s.probe_future = None
        how = f"signal {-code}" if code < 0 else f"code {code}"
        s.last_exit = how
        self._dirty = True
        if s.state == "stopping" or self.stop_requested.is_set():
            s.state = "stopped"
            log.event(s.name, "stopped", exit=how)
            return
        if s.host is not None:  # back to waiting: it starts again with its host
            s.state = "waiting"
            log.event(s.name, "exited", level="warn", exit=how, host=s.host)
            return
        if not s.ever_ready and not self._waits_on_down(s):
            s.early_exits += 1
            if s.early_exits >= s.max_early_exits:
                waiting = [m.name for m in self.members(s) if not m.ever_ready]
                also = f"; in its process {', '.join(waiting)} never became ready either" if waiting else ""
                self._fail(s, f"{s.name} exited {s.early_exits} times before it became ready (last: {how}{also})")
                return
        ran = time.monotonic() - (s.started_at or 0)
        if ran >= STABLE_AFTER:
            s.backoff = BACKOFF_MIN
        s.state = "backoff"
        s.next_start = time.monotonic() + s.backoff
        # why, in one line: a panic's message, or the log's last lines
        last = log.tail(self.log_path(s), 1)
        log.event(s.name, "exited", level="warn", exit=how, restart_in=s.backoff, **({"last": last} if last else {}))
        s.backoff = min(s.backoff * 2, BACKOFF_MAX)

    def _fail(self, s: Service, message: str) -> None:
        s.state = "failed"
        last = log.tail(self.log_path(s))
        self.fatal = Fatal(message + (f"; last log: {last}" if last else ""), hint=f"see {self.log_path(s)}")
        self.stop_requested.set()

    # --- starting and probing ------------------------------------------------------------

    def _deps_ready(self, s: Service) -> bool:
        return all(self.services[d].state == "ready" or self.services[d].ever_ready for d in s.after)

    def _waits_on_down(self, s: Service) -> bool:
        """Something it waits for (its host, and what its host waits for) is not ready now: etcd
        without a majority takes the apiserver's readiness, and what waits for the apiserver
        cannot become ready either. Its bring-up deadline and its count of failures stop
        meanwhile: a server waits for its quorum to return rather than powering off."""
        own = self.services[s.host] if s.host else s
        return any(self.services[d].state != "ready" for d in (*own.after, *((s.host,) if s.host else ())))

    def _mark_started(self, s: Service, now: float) -> None:
        if s.first_started is None:
            s.first_started = now
        else:
            s.restarts += 1
        s.started_at = now
        s.last_probe = 0.0
        s.state = "starting"
        self._dirty = True

    def _start(self, s: Service) -> None:
        now = time.monotonic()
        self._mark_started(s, now)
        if s.task is not None:
            s.task_future = self.pool.submit(s.task, self)
            log.event(s.name, "start", after=now - self.t0)
            return
        assert s.argv is not None
        try:
            argv = s.argv()
            s.pid = process.spawn(argv, s.env, self.log_path(s))
            if self.adopt is not None:
                self.adopt(s.pid)
        except K4sError as e:
            self._fail(s, f"{s.name}: {e.message}")
            if e.hint and self.fatal:
                self.fatal.hint = e.hint
            return
        log.event(s.name, "start", pid=s.pid, after=now - self.t0)
        for m in self.members(s):
            self._mark_started(m, now)
            m.pid = s.pid
            log.event(m.name, "start", pid=s.pid, host=s.name, after=now - self.t0)

    def _became_ready(self, s: Service) -> None:
        now = time.monotonic()
        s.state, s.ready_at, s.ever_ready = "ready", now, True
        if s.first_ready is None:
            s.first_ready = now
        s.early_exits = 0
        self._dirty = True
        log.event(s.name, "ready", after=now - (s.started_at or now), at=now - self.t0)

    def _check_task(self, s: Service) -> None:
        f = s.task_future
        if f is None or not f.done():
            return
        s.task_future = None
        err = f.exception()
        if err is None:
            self._became_ready(s)
            return
        if not self._waits_on_down(s):
            s.early_exits += 1
        msg = err.message if isinstance(err, K4sError) else f"{type(err).__name__}: {err}"
        if s.early_exits >= s.max_early_exits:
            self._fail(s, f"{s.name} failed {s.early_exits} times: {msg}")
            return
        s.state, s.next_start = "backoff", time.monotonic() + s.backoff
        log.event(s.name, "failed", level="warn", error=msg, retry_in=s.backoff)
        s.backoff = min(s.backoff * 2, BACKOFF_MAX)

    def _probe(self, s: Service) -> bool:
        try:
            return bool(s.probe and s.probe())
        except Exception:
            return False

    def _check_probe(self, s: Service, now: float) -> None:
        f = s.probe_future
        if f is not None:
            if not f.done():
                return
            s.probe_future = None
            ok = f.result()
            if s.state == "starting" and ok:
                self._became_ready(s)
            elif s.state == "ready" and not ok:
                s.state = "starting"
                self._dirty = True
                log.event(s.name, "unready", level="warn")
            return
        every = RECHECK_EVERY if s.state == "ready" else PROBE_EVERY
        if s.probe is not None and now - s.last_probe >= every:
            s.last_probe = now
            s.probe_future = self.pool.submit(self._probe, s)
        elif s.probe is None and s.state == "starting":
            self._became_ready(s)

    def step(self) -> None:
        self.reap()
        now = time.monotonic()
        since, self._last_step = now - (self._last_step or now), now
        for name in self.order:
            s = self.services[name]
            if self.stop_requested.is_set():
                break
            if (s.state in ("waiting", "backoff") and s.host is None and now >= s.next_start
                    and self._deps_ready(s)):
                self._start(s)
            elif s.state in ("starting", "ready"):
                if s.task is not None:
                    self._check_task(s)
                else:
                    self._check_probe(s, now)
                if s.state == "starting" and not s.ever_ready and s.first_started is not None:
                    if self._waits_on_down(s):
                        s.paused += since  # its clock runs only while what it waits for is up
                    elif now - s.first_started - s.paused > s.ready_timeout:
                        self._fail(s, f"{s.name} did not become ready within {s.ready_timeout:.0f}s")
        if self._dirty:
            self.write_status()

    # --- the loop and the stop -----------------------------------------------------------

    def all_ready(self) -> bool:
        return all(s.state == "ready" for s in self.services.values())

    def run(self, until: Callable[[], bool] | None = None) -> int:
        """Run until a stop is requested (signal, fatal error) or `until()` is true; then stop all."""
        try:
            while not self.stop_requested.is_set():
                self.step()
                if until and until():
                    break
                self.stop_requested.wait(IDLE_TICK if self.all_ready() else TICK)
        finally:
            self.stop_all()
        if self.fatal:
            raise self.fatal
        return 0

    def request_stop(self, *_: Any) -> None:
        self.stop_requested.set()

    def stop_all(self, deadline: float = 60.0) -> None:
        self.stop_requested.set()
        hook, self.before_stop = self.before_stop, None
        if hook is not None and self.fatal is None:
            try:
                hook()
            except Exception as e:  # the stop goes on whatever happens
                log.event("k4s", "before-stop-failed", level="error", error=str(e))
        end = time.monotonic() + deadline
        for name in reversed(self.order):
            s = self.services[name]
            if s.host is not None:
                continue  # stops with its host
            if s.pid is None:
                for x in (s, *self.members(s)):
                    if x.state not in ("failed",):
                        x.state = "stopped"
                continue
            if s.pre_stop is not None:
                try:
                    s.pre_stop(self)
                except Exception as e:  # the stop goes on whatever happens
                    log.event(s.name, "pre-stop-failed", level="error", error=str(e))
            for x in (s, *self.members(s)):
                x.state = "stopping"
                log.event(x.name, "stopping", pid=s.pid)
            self._dirty = True
            try:
                os.kill(s.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            limit = min(end, time.monotonic() + s.stop_timeout)
            while s.pid is not None and time.monotonic() < limit:
                self.reap()
                time.sleep(0.05)
            if s.pid is not None:
                log.event(s.name, "kill", level="warn", pid=s.pid)
                try:
                    os.kill(s.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                while s.pid is not None and time.monotonic() < limit + 5:
                    self.reap()
                    time.sleep(0.05)
            if s.post_stop is not None:
                try:
                    s.post_stop(self)
                except Exception as e:  # the stop goes on whatever happens
                    log.event(s.name, "post-stop-failed", level="warn", error=str(e))
        self.kill_descendants()
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.write_status()

    def kill_descendants(self, grace: float = 5.0, spare_services: bool = False) -> int:
        """Processes left behind (container shims, helpers): TERM, then KILL, all reaped; how many.
        With spare_services, only those that are not a running service or its descendant:
        the containers and their shims, which re-parent to us."""
        import psutil

        me = psutil.Process()
        left = me.children(recursive=True)
        if spare_services:
            spared = set()
            for s in self.services.values():
                if s.pid is not None:
                    spared.add(s.pid)
                    try:
                        spared |= {c.pid for c in psutil.Process(s.pid).children(recursive=True)}
                    except psutil.NoSuchProcess:
                        pass
            left = [p for p in left if p.pid not in spared]
        if not left:
            return 0
        for p in left:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        end = time.monotonic() + grace
        while time.monotonic() < end and any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in left):
            self.reap()
            time.sleep(0.05)
        for p in left:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        time.sleep(0.1)
        self.reap()
        return len(left)

    def write_status(self) -> None:
        self._dirty = False
        if self.status_path is None:
            return
        now = time.monotonic()
        doc = {
            "supervisor_pid": os.getpid(),
            "updated": time.time(),
            "started": self.started,  # seconds since the machine booted (the boot timeline's zero)
            "components": {
                s.name: {
                    "state": s.state, "pid": s.pid, "restarts": s.restarts, "ready": s.state == "ready",
                    "started_after": None if s.first_started is None else round(s.first_started - self.t0, 2),
                    "ready_after": None if s.ready_at is None or s.started_at is None
                    else round(s.ready_at - s.started_at, 2),
                    "ready_at": None if s.first_ready is None else round(s.first_ready - self.t0, 2),
                    "up": None if s.started_at is None or s.pid is None else round(now - s.started_at, 1),
                    "last_exit": s.last_exit,
                } for s in (self.services[n] for n in self.order)
            },
        }
        try:
            write_atomic(self.status_path, json.dumps(doc, indent=1) + "\n")
        except (OSError, K4sError):
            pass
