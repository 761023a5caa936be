"""Kernel modules into the image: the wanted ones with their dependencies and depmod's output."""

from __future__ import annotations

import shutil
from pathlib import Path

from k4s.errors import K4sError
from k4s.image.cpio import Tree
from k4s.mkimage.host import run
from k4s.sys import kmod


def kernel_release(kernel_root: Path) -> str:
    mods = sorted(p.name for p in (kernel_root / "lib" / "modules").iterdir())
    if not mods:
        raise K4sError(f"no kernel modules under {kernel_root}", hint="run build/setup.sh to fetch the kernel")
    return mods[-1]


def module_files(kernel_root: Path, wanted: tuple[str, ...]) -> list[str]:
    """The image paths of the wanted modules and their dependencies, in load order."""
    release = kernel_release(kernel_root)
    idx = kmod.Index.load(str(kernel_root), release)
    kos = [f"/usr/lib/modules/{release}/{idx.deps[n][0]}" for w in wanted for n in idx.plan(w)]
    return list(dict.fromkeys(kos))


def add_modules(t: Tree, kernel_root: Path, wanted: list[str], workdir: Path, part: str) -> None:
    """The wanted modules with their dependencies and depmod's output, under /usr/lib/modules."""
    stage = workdir / "modules"
    shutil.rmtree(stage, ignore_errors=True)
    stage_modules(kernel_root, kernel_release(kernel_root), wanted, stage)
    t.tree(stage / "lib", "usr/lib", part)


def stage_modules(kernel_root: Path, release: str, wanted: list[str], stage: Path) -> None:
    """Copy wanted modules with their dependencies into stage and run depmod there."""
    src = kernel_root / "lib" / "modules" / release
    if not (src / "modules.dep").exists():
        # Debian's package ships no depmod output: make it once, in the cache.
        run(["depmod", "-b", str(kernel_root), release])
    idx = kmod.Index.load(str(kernel_root), release)
    names: list[str] = []
    for w in wanted:
        try:
            names += idx.plan(w)
        except K4sError:
            if idx.resolve(w) is None:
                raise K4sError(f"module {w} is not in kernel {release}", hint="fix rootfs/etc/k4s/modules.list") from None
    dst = stage / "lib" / "modules" / release
    for n in dict.fromkeys(names):
        rel = idx.deps[n][0]
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, dst / rel)
    for f in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (src / f).exists():
            shutil.copy2(src / f, dst / f)
    run(["depmod", "-b", str(stage), release])
    for f in ("modules.dep.bin", "modules.alias.bin", "modules.symbols.bin", "modules.builtin.bin",
              "modules.builtin.alias.bin", "modules.devname", "modules.softdep.bin"):
        (dst / f).unlink(missing_ok=True)  # binary indexes: only kmod's tools read them


