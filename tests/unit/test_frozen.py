"""The frozen executable: every applet answers --help through a symlink."""

from __future__ import annotations

import subprocess

import pytest

from applets import APPLETS
from tests.conftest import FROZEN, require


@pytest.fixture(scope="module")
def links(tmp_path_factory) -> dict[str, str]:
    require(FROZEN.exists(), f"frozen k4s at {FROZEN}", "make k4s")
    d = tmp_path_factory.mktemp("bin")
    subprocess.run([str(FROZEN), "--install", str(d)], check=True, env={"PATH": "/usr/bin:/bin"})
    return {name: str(d / name) for name in APPLETS}


@pytest.mark.parametrize("name", sorted(APPLETS))
def test_applet_help_through_symlink(links, name) -> None:
    r = subprocess.run([links[name], "--help"], capture_output=True, text=True, timeout=60,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"Usage: {name} ")
    assert APPLETS[name][1].split()[0] in r.stdout  # the summary's first word is in the help


def test_frozen_version_and_unknown() -> None:
    require(FROZEN.exists(), f"frozen k4s at {FROZEN}", "make k4s")
    r = subprocess.run([str(FROZEN), "--version"], capture_output=True, text=True, check=True)
    assert r.stdout.startswith("k4s ")
    r = subprocess.run([str(FROZEN), "nope"], capture_output=True, text=True)
    assert r.returncode == 2 and "unknown applet 'nope'" in r.stderr
