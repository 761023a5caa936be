"""Environments for the programs k4s starts.

The PyInstaller bootloader points LD_LIBRARY_PATH at the bundle (keeping the
old value in LD_LIBRARY_PATH_ORIG) and sets _PYI_* variables. A foreign binary
must not inherit either: it would load the bundle's libssl or libz.
"""

from __future__ import annotations

import os
from collections.abc import Mapping


def foreign_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    env = dict(os.environ if base is None else base)
    orig = env.pop("LD_LIBRARY_PATH_ORIG", None)
    env.pop("LD_LIBRARY_PATH", None)
    if orig:
        env["LD_LIBRARY_PATH"] = orig
    for k in [k for k in env if k.startswith("_PYI_") or k.startswith("_MEI")]:
        del env[k]
    env.update(extra)
    return env
