"""Shared test helpers: where things are, and how a missing prerequisite is treated.

Under CI=true a missing prerequisite fails the test; elsewhere it skips with
the reason, so a developer without the Go build can still run the unit tier.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from k4s.sys import tpm

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "out"
COMPONENTS = OUT / "components"
FROZEN = OUT / "k4s" / "k4s"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(ok: bool, what: str, how: str) -> None:
    """Fail under CI, skip elsewhere, when a prerequisite is missing."""
    if ok:
        return
    msg = f"missing prerequisite: {what} (run `{how}`)"
    if IN_CI:
        pytest.fail(msg, pytrace=False)
    pytest.skip(msg)


def component(name: str) -> Path:
    path = COMPONENTS / "bin" / name
    require(path.exists(), f"component {name} at {path}", "make components")
    return path


def tool(name: str) -> str:
    path = shutil.which(name)
    require(path is not None, f"host tool {name}", "make setup")
    assert path
    return path


@contextlib.contextmanager
def swtpm(state: Path) -> Iterator[Callable[[], tpm.Tpm]]:
    """A real TPM 2.0 (swtpm, libtpms) with its state in `state`: yields a function that opens a
    connection to it (the raw command channel, as /dev/tpmrm0 takes them)."""
    state.mkdir(parents=True, exist_ok=True)
    sock = state / "tpm.sock"
    proc = subprocess.Popen([tool("swtpm"), "socket", "--tpm2", "--tpmstate", f"dir={state}", "--flags",
                             "not-need-init,startup-clear", "--server", f"type=unixio,path={sock}",
                             "--ctrl", f"type=unixio,path={state / 'ctrl.sock'}"])

    def connect() -> tpm.Tpm:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(sock))
        return tpm.Tpm(sock=s)
    try:
        for _ in range(200):
            if sock.exists():
                break
            time.sleep(0.05)
        yield connect
    finally:
        proc.kill()
        proc.wait(10)


def need_root() -> None:
    require(os.geteuid() == 0, "root", "run the tests as root")


def k4s_cmd(*args: str, env: dict[str, str] | None = None, check: bool = False,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run the k4s CLI from the source tree, as a user would from a shell."""
    e = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8", "K4S_CMDLINE": ""}
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "k4s", *args], cwd=ROOT, env=e, text=True,
                          capture_output=True, check=check, timeout=timeout)


def tls_pair(tmp: Path, name: str, ip: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate from it for ip: (ca.crt, server.crt, server.key)."""
    from k4s.cluster import certs, pki

    ca = certs.CA(f"{name}-ca", f"{name} payload CA")
    leaf = certs.Leaf(f"{name}-server", ca, "payload-server", usages=(certs.SERVER,), ip_addresses=(ip,))
    ca_key, ca_cert = pki.issue_ca(ca)
    key, cert = pki.issue_leaf(leaf, ca_key, ca_cert)
    paths = tmp / f"{name}-ca.crt", tmp / f"{name}.crt", tmp / f"{name}.key"
    paths[0].write_bytes(pki.cert_pem(ca_cert))
    paths[1].write_bytes(pki.cert_pem(cert))
    paths[2].write_bytes(pki.key_pem(key))
    return paths


def components_build():  # type: ignore[no-untyped-def]
    """build/components/build.py as a module (it is a script, outside the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("k4s_components_build", ROOT / "build" / "components" / "build.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod
