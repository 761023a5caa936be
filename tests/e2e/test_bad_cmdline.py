"""A bad kernel command line: the error on the console, then a clean poweroff, never a panic."""

from __future__ import annotations

import pytest

from tests.e2e.conftest import make_vm


@pytest.mark.parametrize("append,expected", [
    ("k4s.bogus=1", "kernel command line: unknown key 'bogus'"),
    ("k4s.ip=10.0.2.300/24", "kernel command line: key 'ip': '10.0.2.300/24' is neither 'dhcp' nor"),
])
def test_bad_cmdline_prints_error_and_powers_off(tmp_path, append, expected) -> None:
    vm = make_vm(tmp_path, append=append)
    proc = vm.start()
    try:
        rc = proc.wait(timeout=300)  # the VM must exit by itself (-no-reboot: poweroff ends QEMU)
    finally:
        if proc.poll() is None:
            proc.kill()
    console = vm.console.read_text(errors="replace")
    assert rc == 0
    errors = [ln for ln in console.splitlines() if ln.startswith("k4s init: error:")]
    assert len(errors) == 1 and expected in errors[0] and "(hint: " in errors[0], console[-2000:]
    assert "k4s: poweroff" in console
    assert "Kernel panic" not in console
