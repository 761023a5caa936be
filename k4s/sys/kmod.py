"""Kernel modules: resolve names through modules.alias/softdep/dep and load with finit_module.

    <root>/lib/modules/<release>/modules.dep       "kernel/x/a.ko: kernel/y/b.ko kernel/z/c.ko"
    <root>/lib/modules/<release>/modules.alias     "alias nft-expr-numgen nft_numgen"
    <root>/lib/modules/<release>/modules.softdep   "softdep libcrc32c pre: crc32c"
    <root>/lib/modules/<release>/modules.builtin   built into the kernel: nothing to load

Dependencies load first, in modules.dep order (it lists them deepest last).
"""

from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field
from pathlib import Path

from k4s.errors import K4sError
from k4s.sys import libc

EEXIST = 17


def norm(name: str) -> str:
    return name.replace("-", "_")


def module_name(path: str) -> str:
    base = os.path.basename(path)
    for ext in (".ko.xz", ".ko.zst", ".ko.gz", ".ko"):
        if base.endswith(ext):
            return norm(base[: -len(ext)])
    return norm(base)


@dataclass
class Index:
    base: Path
    deps: dict[str, tuple[str, list[str]]] = field(default_factory=dict)  # name -> (path, dep names)
    aliases: list[tuple[str, str]] = field(default_factory=list)
    softdeps: dict[str, tuple[list[str], list[str]]] = field(default_factory=dict)
    builtin: set[str] = field(default_factory=set)

    @classmethod
    def load(cls, root: str = "/", release: str | None = None) -> Index:
        rel = release or os.uname().release
        base = Path(root) / "lib" / "modules" / rel
        idx = cls(base)
        try:
            dep_text = (base / "modules.dep").read_text()
        except OSError as e:
            raise K4sError(f"cannot read {base / 'modules.dep'}: {e.strerror}",
                           hint="the image must carry depmod output for this kernel") from e
        for line in dep_text.splitlines():
            if ":" not in line:
                continue
            path, _, deps = line.partition(":")
            idx.deps[module_name(path)] = (path, [module_name(d) for d in deps.split()])
        for line in _lines(base / "modules.alias"):
            parts = line.split()
            if len(parts) == 3 and parts[0] == "alias":
                idx.aliases.append((parts[1], norm(parts[2])))
        for line in _lines(base / "modules.softdep"):
            parts = line.split()
            if len(parts) >= 2 and parts[0] == "softdep":
                pre, post, cur = [], [], None
                for w in parts[2:]:
                    if w in ("pre:", "post:"):
                        cur = pre if w == "pre:" else post
                    elif cur is not None:
                        cur.append(norm(w))
                idx.softdeps[norm(parts[1])] = (pre, post)
        idx.builtin = {module_name(line.strip()) for line in _lines(base / "modules.builtin")}
        return idx

    def resolve(self, name: str) -> str | None:
        n = norm(name)
        if n in self.deps or n in self.builtin:
            return n
        for pattern, target in self.aliases:
            if fnmatch.fnmatchcase(name, pattern) or fnmatch.fnmatchcase(n, norm(pattern)):
                return target
        return None

    def plan(self, name: str) -> list[str]:
        """Modules to load for `name`, dependencies first, without duplicates."""
        out: list[str] = []
        seen: set[str] = set()

        def visit(n: str) -> None:
            if n in seen:
                return
            seen.add(n)
            pre, post = self.softdeps.get(n, ([], []))
            for p in pre:
                if self.resolve(p):
                    visit(self.resolve(p) or p)
            if n in self.deps:
                for d in reversed(self.deps[n][1]):
                    visit(d)
                out.append(n)
            for p in post:
                if self.resolve(p):
                    visit(self.resolve(p) or p)

        target = self.resolve(name)
        if target is None:
            raise K4sError(f"module {name} not found in {self.base}", hint="check the name, or add it to the image")
        visit(target)
        return out


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text().splitlines()
    except OSError:
        return []


def loaded() -> dict[str, tuple[int, int, str]]:
    """name -> (size, use count, users) from /proc/modules."""
    out = {}
    for line in _lines(Path("/proc/modules")):
        parts = line.split()
        if len(parts) >= 4:
            out[parts[0]] = (int(parts[1]), int(parts[2]), parts[3].rstrip(",") if parts[3] != "-" else "")
    return out


def drop_loaded_files(idx: Index, have: dict[str, tuple[int, int, str]] | None = None) -> int:
    """Delete the files of the modules the kernel holds: on a RAM root they are RAM, and a
    module that is loaded is never read again (nothing is unloaded). The index files and
    the modules not loaded (the data disk's, those the kernel asks for later) stay. The
    bytes freed."""
    freed = 0
    for name in have if have is not None else loaded():
        if name not in idx.deps:
            continue
        path = idx.base / idx.deps[name][0]
        try:
            size = path.stat().st_size
            path.unlink()
        except OSError:
            continue
        freed += size
    return freed


def insmod(path: Path, params: str = "") -> bool:
    """Load one module file; False if it was already loaded."""
    flags = 0
    if path.suffix in (".xz", ".zst", ".gz"):
        flags |= libc.MODULE_INIT_COMPRESSED_FILE  # the kernel decompresses (if built with support)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise K4sError(f"cannot open {path}: {e.strerror}", hint="check the module path") from e
    try:
        libc.finit_module(fd, params, flags)
    except OSError as e:
        if e.errno == EEXIST:
            return False
        raise K4sError(f"cannot load {path.name}: {os.strerror(e.errno or 0)}",
                       hint="check dmesg; the module may not match this kernel") from e
    finally:
        os.close(fd)
    return True


def modprobe(idx: Index, name: str, params: str = "") -> list[str]:
    """Load a module with its dependencies; the names actually loaded."""
    done = []
    have = loaded()
    plan = idx.plan(name)
    for n in plan:
        if n in have or n in idx.builtin:
            continue
        path = idx.base / idx.deps[n][0]
        if insmod(path, params if n == plan[-1] else ""):
            done.append(n)
    return done
