"""The environment of every program k4s starts: built here, in one place.

The PyInstaller bootloader points LD_LIBRARY_PATH at the bundle (keeping the
old value in LD_LIBRARY_PATH_ORIG) and sets _PYI_* variables. A foreign
binary must not inherit either: it would load the bundle's libssl or libz.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

SYSTEM_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETTLE_AFTER = "60s"  # start-up, as far as a component's garbage collector is concerned


def child_env(bin_dir: str | os.PathLike[str] | None = None, gogc: int = 100,
              inherit: Mapping[str, str] | None = None, gomaxprocs: int = 0) -> dict[str, str]:
    """An explicit environment: PATH (bin_dir first), HOME, LANG, TMPDIR, and for Go
    programs their garbage-collector setting. With `inherit` (a user's environment, for
    a tool run on their behalf) its variables are kept, minus the bundle's.

    A GOGC below Go's default applies once a component has started (SETTLE_AFTER):
    start-up makes a lot of short-lived garbage, and a low GOGC there costs many
    collections. So does a GOMAXPROCS (0: one per CPU) once started: start-up uses every
    CPU. Our multicall main (build/components/kube) reads K4S_SETTLED_GOGC and
    K4S_SETTLED_GOMAXPROCS."""
    env: dict[str, str] = {}
    if inherit is not None:
        env = {k: v for k, v in inherit.items() if not k.startswith(("_PYI_", "_MEI", "LD_LIBRARY_PATH"))}
        if orig := inherit.get("LD_LIBRARY_PATH_ORIG"):
            env["LD_LIBRARY_PATH"] = orig
    path = env.get("PATH", SYSTEM_PATH)
    env |= {
        "PATH": f"{bin_dir}:{path}" if bin_dir else path,
        "HOME": env.get("HOME") or os.environ.get("HOME", "/root"),
        "LANG": env.get("LANG", "C.UTF-8"),
        "TMPDIR": env.get("TMPDIR", "/tmp"),
    }
    if inherit is None:
        env["GOGC"] = str(max(gogc, 100))
        if gogc < 100:
            env |= {"K4S_SETTLED_GOGC": str(gogc), "K4S_SETTLE_AFTER": SETTLE_AFTER}
        if gomaxprocs:
            env |= {"K4S_SETTLED_GOMAXPROCS": str(gomaxprocs), "K4S_SETTLE_AFTER": SETTLE_AFTER}
    return env
