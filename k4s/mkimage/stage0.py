"""/init when the k4s bundle itself is a squashfs part: stage0.sh, with the paths and modules
filled in. Busybox loads loop and squashfs, checks the parts stage 1 handed a signed list for,
mounts the bundle and execs k4s init, which stays PID 1."""

from __future__ import annotations

import re
from pathlib import Path

from k4s import layout
from k4s.errors import K4sError
from k4s.mkimage.modules import module_files

SCRIPT = Path(__file__).with_name("stage0.sh")


def stage0_init(kernel_root: Path) -> bytes:
    values = {"PARTS_CHECK": str(layout.PARTS_CHECK), "BUNDLE": str(layout.part_mount("k4s")), "K4S": str(layout.K4S),
              "MODULES": " ".join(module_files(kernel_root, layout.STAGE0_MODULES))}
    try:
        text = SCRIPT.read_text()
    except OSError as e:
        raise K4sError(f"cannot read {SCRIPT}: {e.strerror}", hint="the k4s source tree is incomplete") from None
    out = re.sub(r"@([A-Z_0-9]+)@", lambda m: values[m.group(1)], text)
    return out.encode()
