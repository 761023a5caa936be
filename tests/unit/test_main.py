"""The multicall dispatcher, as a user meets it from a shell."""

from __future__ import annotations

import os
import subprocess
import sys

from applets import APPLETS
from tests.conftest import ROOT, k4s_cmd


def test_list_names_every_applet_with_summary() -> None:
    r = k4s_cmd("--list", check=True)
    for name, (_, summary) in APPLETS.items():
        assert f"{name}" in r.stdout and summary in r.stdout


def test_unknown_applet_prints_list_and_exits_2() -> None:
    r = k4s_cmd("frobnicate")
    assert r.returncode == 2
    assert "k4s: unknown applet 'frobnicate'" in r.stderr
    assert "pki" in r.stderr


def test_version() -> None:
    r = k4s_cmd("--version", check=True)
    assert r.stdout.startswith("k4s ")


def test_install_makes_symlinks_that_dispatch(tmp_path) -> None:
    # A script named k4s stands in for the executable: dispatch is by link name.
    exe = tmp_path / "k4s"
    exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(ROOT)!r})\n"
                   "from k4s.main import main\nmain()\n")
    exe.chmod(0o755)
    bindir = tmp_path / "bin"
    subprocess.run([str(exe), "--install", str(bindir)], check=True)
    assert sorted(os.listdir(bindir)) == sorted(APPLETS)
    for name in APPLETS:
        assert os.readlink(bindir / name) == str(exe)
    # Idempotent, and the link runs its applet.
    subprocess.run([str(exe), "--install", str(bindir)], check=True)
    r = subprocess.run([str(bindir / "config"), "validate", "--cmdline", ""], capture_output=True, text=True,
                       env={"PATH": "/usr/bin:/bin", "K4S_CONFIG": str(tmp_path / "none.yaml")})
    assert r.returncode == 2 and "not found" in r.stderr  # the explicit config file is missing


def test_install_into_unwritable_path_fails_cleanly(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    r = k4s_cmd("--install", str(blocker / "bin"))
    assert r.returncode != 0
    assert r.stderr.count("\n") == 1 and "hint:" in r.stderr


def test_dispatch_imports_only_the_applet_it_runs() -> None:
    code = (
        "import sys; from k4s.main import dispatch\n"
        "rc = dispatch(['config', 'validate', '--cmdline', ''])\n"
        "others = [m for m in sys.modules if m.startswith('applets.') and m != 'applets.config' and not m.startswith('applets._')]\n"
        "print(rc, others)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                       env={"PATH": "/usr/bin:/bin", "K4S_CONFIG": "/dev/null"})
    assert r.stdout.strip() == "0 []"


def test_version_does_not_import_click() -> None:
    code = "import sys; from k4s.main import dispatch; dispatch(['k4s', '--version']); print('click' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert r.stdout.strip().endswith("False")


def test_readme_lists_every_applet() -> None:
    import re

    from applets import APPLETS

    text = (ROOT / "README.md").read_text()
    table = text.split("<!-- applets:begin -->", 1)[1].split("<!-- applets:end -->", 1)[0]
    listed = dict(re.findall(r"^\| `([a-z0-9-]+)` \| (.+) \|$", table, re.M))
    assert listed == {n: summary for n, (_, summary) in APPLETS.items()}
