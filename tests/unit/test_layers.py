"""The import graph is the documented layering (README, "Layers"), and PID 1 and stage 1
import only what they may.

Every import counts, at module level or inside a function: an import inside a function
still runs in the process that calls it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from k4s import layout
from tests.conftest import ROOT

# lowest first: a module may import from its own layer and the ones below, never above
LAYERS = (
    ("base", ("k4s.errors", "k4s.log", "k4s.events", "k4s.layout", "k4s.config", "k4s.fsutil", "k4s.tlsserve",
              "k4s.sys", "k4s.upstream")),
    ("formats", ("k4s.image",)),
    ("node", ("k4s.cluster",)),
    ("boot", ("k4s.boot",)),
    ("build host", ("k4s.host", "k4s.mkimage")),
    ("commands", ("k4s.main", "k4s.__main__", "applets")),
)


def layer(module: str) -> int:
    if module == "k4s":
        return 0  # the package itself: its version
    for rank, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} is in no layer: add it to LAYERS and to the README")


def modules() -> dict[str, Path]:
    out = {}
    for top in ("k4s", "applets"):
        for f in sorted((ROOT / top).rglob("*.py")):
            parts = f.relative_to(ROOT).with_suffix("").parts
            out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = f
    return out


def imports(path: Path, name: str) -> list[tuple[int, str]]:
    """(line, module) of every k4s or applets import in the file, relative ones resolved."""
    out = []
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            known = modules()
            out += [(node.lineno, f"{base}.{a.name}" if f"{base}.{a.name}" in known else base) for a in node.names]
    return [(ln, m) for ln, m in out if m.split(".")[0] in ("k4s", "applets")]


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = []
    for name, path in modules().items():
        for line, target in imports(path, name):
            if layer(target) > layer(name):
                upward.append(f"{path.relative_to(ROOT)}:{line}: {name} ({LAYERS[layer(name)][0]}) imports "
                              f"{target} ({LAYERS[layer(target)][0]})")
    assert not upward, "imports against the layering:\n" + "\n".join(upward)


def loaded_by(*names: str) -> set[str]:
    """The modules a fresh interpreter has loaded after importing names."""
    code = f"import sys\nfor n in {list(names)!r}: __import__(n)\nprint('\\n'.join(sorted(sys.modules)))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    return set(r.stdout.split())


# What PID 1 imports: init, and the node it runs in its own process (the supervisor, the tasks
# and components it runs in threads). Anything needing cryptography (making keys, signing) runs
# in a forked child (k4s.sys.process.call_in_child, Supervisor.call_in_child) that exits after.
PID1 = ("k4s.boot.init", "k4s.boot.netconf", "k4s.boot.power", "k4s.boot.datadisk", "k4s.cluster.server",
        "k4s.cluster.tasks", "k4s.cluster.services", "k4s.cluster.approver", "k4s.cluster.metrics",
        "k4s.cluster.renew", "k4s.cluster.join", "k4s.cluster.components")


def test_pid1_never_imports_cryptography() -> None:
    from k4s.cluster import components

    loaded = loaded_by(*PID1, *components.MODULES.values())
    assert "k4s.cluster.server" in loaded
    assert not {m for m in loaded if m.split(".")[0] == "cryptography"}, "PID 1 would keep cryptography in RAM"


NODE_ONLY = ("cryptography", "psutil", "yaml")  # build/stage1.spec leaves them out: stage 1 must not need them


def test_stage1_imports_none_of_the_node_s_libraries() -> None:
    """Stage 1 fits a 16 MiB flash part because its build leaves the node's libraries out (the
    standard library's optional modules it also leaves out have fallbacks: hashlib, shutil)."""
    spec = (ROOT / "build" / "stage1.spec").read_text()
    assert all(f'"{m}"' in spec.split("EXCLUDES = ", 1)[1].split("]", 1)[0] for m in NODE_ONLY)
    loaded = loaded_by("k4s.boot.stage1", *(f"applets.{a}" for a in layout.STAGE1_APPLETS))
    assert "k4s.boot.stage1" in loaded
    missing = sorted(m for m in loaded if m.split(".")[0] in NODE_ONLY)
    assert not missing, f"stage 1 imports what its build leaves out: {missing}"
