"""The shared libraries (and loader) the image's programs need: ldd's closure."""

from __future__ import annotations

import filecmp
import re
import subprocess
from collections.abc import Iterable
from pathlib import Path

from k4s.errors import K4sError
from k4s.image.cpio import Tree


def is_elf(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"\x7fELF"
    except OSError:
        return False


_LDD = re.compile(r"(?:=>\s*)?(/\S+)\s+\(0x")


def ldd(path: Path, library_path: str | None = None) -> list[str]:
    """Absolute paths of the shared libraries (and loader) a dynamic ELF needs."""
    env = {"PATH": "/usr/bin:/bin"}
    if library_path:
        env["LD_LIBRARY_PATH"] = library_path
    r = subprocess.run(["ldd", str(path)], capture_output=True, text=True, env=env)
    if r.returncode != 0 or "not a dynamic executable" in r.stdout + r.stderr:
        return []
    missing = [ln.split()[0] for ln in r.stdout.splitlines() if "not found" in ln]
    if missing:
        raise K4sError(f"{path} needs {', '.join(missing)}, which the build host lacks",
                       hint="install the package that provides them (build/setup.sh)")
    return [m.group(1) for ln in r.stdout.splitlines() if (m := _LDD.search(ln))]


def add_closure(tree: Tree, elves: Iterable[tuple[Path, str | None]], skip_dir: Path | None = None,
                part: str = "libs", link_dir: str = "") -> None:
    """The libraries `elves` need, into `part`. One the frozen bundle (skip_dir, at link_dir in
    the image) carries byte for byte becomes a link to the bundle's copy, not a second copy
    (cryptsetup's libcrypto is the bundle's, 4.7 MB): nothing dynamic runs before stage 0 has
    mounted the bundle's part."""
    for path, libpath in elves:
        for lib in ldd(path, libpath):
            if skip_dir and Path(lib).resolve().is_relative_to(skip_dir.resolve()):
                continue  # the bundle carries it
            norm = tree.norm(lib)
            if norm in tree.entries:
                continue
            twin = skip_dir / Path(lib).name if skip_dir else None
            if link_dir and twin and twin.is_file() and filecmp.cmp(twin, Path(lib).resolve(), shallow=False):
                tree.symlink(lib, f"{link_dir}/{twin.name}", part)
            else:
                tree.file(lib, Path(lib).resolve(), part)


def bundle_elves(bundle: Path) -> list[tuple[Path, str | None]]:
    """A frozen k4s's ELF files for ldd: the launcher without LD_LIBRARY_PATH (it needs the
    system libz before PyInstaller sets its paths), the bundle's .so files with it."""
    internal = bundle / "_internal"
    return [(bundle / "k4s", None), *((p, str(internal)) for p in sorted(internal.rglob("*.so*")) if is_elf(p))]
