"""ruff runs as a test: the code style is checked like behaviour is."""

from __future__ import annotations

import shutil
import subprocess

from tests.conftest import ROOT, require


def test_ruff_clean() -> None:
    ruff = shutil.which("ruff")
    require(ruff is not None, "ruff", "make setup")
    r = subprocess.run([str(ruff), "check", "k4s", "applets", "tests", "build", "bench"], cwd=ROOT, capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stdout + r.stderr
