"""The build host's programs, as mkimage runs them: one line and a hint when one fails."""

from __future__ import annotations

import os
import subprocess

from k4s.errors import K4sError


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Its stdout; a failure is one line (the tool's own words, stderr else stdout) and a hint.
    `env` is added to this process's environment."""
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                       env={**os.environ, **env} if env else None)
    if r.returncode != 0:
        why = " ".join((r.stderr.strip() or r.stdout.strip() or f"status {r.returncode}").split())
        raise K4sError(f"{argv[0]} failed: {why[:300]}", hint=f"run `{' '.join(argv)}` to see why")
    return r.stdout
