"""The build host's programs, as mkimage runs them: one line and a hint when one fails."""

from __future__ import annotations

import subprocess

from k4s.errors import K4sError


def run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise K4sError(f"{argv[0]} failed: {r.stderr.strip()[:300]}", hint=f"run `{' '.join(argv)}` to see why")
    return r.stdout
