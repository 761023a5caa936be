"""A real control plane on the host: `k4s server --control-plane-only` as root on loopback."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import COMPONENTS, ROOT, need_root, require

BIN = COMPONENTS / "bin"


@dataclass
class Server:
    proc: subprocess.Popen[str]
    data: Path
    run: Path
    kubeconfig: Path
    log: Path

    def args(self) -> list[str]:
        return server_args(self.data, self.run, self.kubeconfig)

    def kubectl(self, *args: str, check: bool = True, **kw: object) -> subprocess.CompletedProcess[str]:
        r = subprocess.run([str(BIN / "kubectl"), "--kubeconfig", str(self.kubeconfig), *args],
                           capture_output=True, text=True, timeout=60, **kw)  # type: ignore[call-overload]
        if check and r.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed: {r.stderr}")
        return r

    def status(self) -> dict:
        try:
            return json.loads((self.run / "status.json").read_text())
        except (OSError, ValueError):
            return {}

    def wait_ready(self, timeout: float = 180) -> dict:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            st = self.status().get("components", {})
            if st and all(c["ready"] for c in st.values()):
                return st
            if self.proc.poll() is not None:
                raise AssertionError(f"k4s server exited {self.proc.returncode}: {self.log.read_text()[-3000:]}")
            time.sleep(0.5)
        raise AssertionError(f"not ready in {timeout}s: {self.status()}\n{self.log.read_text()[-3000:]}")

    def stop(self, timeout: float = 90) -> float:
        t = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return time.monotonic() - t


def server_args(data: Path, run: Path, kubeconfig: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "k4s", "server", "--cmdline", "", "--config", os.devnull,
            "--set", f"data-dir={data}", "--set", f"run-dir={run}", "--set", f"bin-dir={BIN}",
            "--set", f"write-kubeconfig={kubeconfig}", "--set", "node-name=k4s-test",
            "--set", "node-ip=127.0.0.1", *extra]


def start_server(tmp: Path, *extra: str) -> Server:
    need_root()
    require((BIN / "kube-apiserver").exists(), "built components", "make components")
    data, run, kc, logf = tmp / "data", tmp / "run", tmp / "admin.kubeconfig", tmp / "server.log"
    proc = subprocess.Popen(server_args(data, run, kc, *extra), cwd=ROOT, stdout=open(logf, "w"),
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    return Server(proc, data, run, kc, logf)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    s = start_server(tmp_path_factory.mktemp("k4s"), "--control-plane-only")
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
