"""The appliance's tree: every file in its part (the table is k4s.layout), then squashfs parts,
stage 0 as /init, and the segments written."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from k4s import layout
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image.cpio import Tree
from k4s.image.manifest import digest
from k4s.mkimage.elf import add_closure, bundle_elves, is_elf
from k4s.mkimage.host import run
from k4s.mkimage.modules import add_modules
from k4s.mkimage.segments import Segment, pack
from k4s.mkimage.squashfs import squash_part
from k4s.mkimage.stage0 import stage0_init


@dataclass
class Inputs:
    bundle: Path          # out/k4s (the frozen onedir)
    components: Path      # out/components/bin
    images: Path          # out/images
    rootfs: Path          # rootfs/
    kernel_root: Path     # the unpacked linux-image package
    busybox: Path = Path("/bin/busybox")
    extra: list[Path] = field(default_factory=list)  # more overlay trees


def node_binaries() -> list[str]:
    """Every program under bin-dir the node runs: the components' and the addons'."""
    from k4s.cluster import addons, components

    return list(dict.fromkeys([*components.binaries(), *addons.BINARIES]))


def add_binaries(t: Tree, bindir: Path, names: list[str]) -> list[Path]:
    """The named programs from the components' bin dir into LIBEXEC. A name that is a link to
    another file of that dir (kube-apiserver -> kube) stays a link; the real files go in their
    part (layout.binary_part). The real files, for ldd."""
    libexec = layout.member(layout.LIBEXEC)
    real: list[Path] = []
    for name in names:
        p = bindir / name
        if not p.exists():
            raise K4sError(f"component {name} not found in {bindir}", hint="run `make components`")
        target = os.readlink(p) if p.is_symlink() else ""
        if target and "/" not in target:  # a name of a multicall in the same dir
            file = target
            t.symlink(f"{libexec}/{name}", target, layout.binary_part(target))
        else:
            file = name
        if f"{libexec}/{file}" not in t.entries:
            src = (bindir / file).resolve()
            t.file(f"{libexec}/{file}", src, layout.binary_part(file), 0o755)
            real.append(src)
    return real


def skeleton(dirs: Iterable[str | Path]) -> Tree:
    """The root both images start from (part base): merged-/usr links, the directories, the
    device nodes, an empty resolv.conf."""
    t = Tree(merged=dict(layout.MERGED))
    for name, target in layout.MERGED.items():
        t.symlink(name, target, "base")
    for d in dirs:
        t.dir(layout.member(d), "base", 0o1777 if str(d) == "tmp" else 0o755)
    for path, major, minor, mode in layout.DEVICES:
        t.dev(path, major, minor, mode)
    t.data("etc/resolv.conf", b"", "base")
    return t


def add_tools(t: Tree, busybox: Path) -> list[Path]:
    """busybox and its applets (where k4s has none of its own), the host tools and xtables
    plugins; the real files, for ldd."""
    t.file("usr/bin/busybox", busybox.resolve(), "tools", 0o755)
    ours = {n for names in layout.APPLET_LINKS.values() for n in names}
    ours |= {n for host, links in layout.HOST_TOOLS.items() for n in (os.path.basename(host), *links)}
    for applet in run([str(busybox), "--list-full"]).split():
        if os.path.basename(applet) not in ours and t.norm(applet) not in t.entries:
            t.symlink(applet, "/usr/bin/busybox", "tools")
    tools = []
    for host, links in layout.HOST_TOOLS.items():
        p = Path(host)
        if not p.exists():
            raise K4sError(f"{host} not found on the build host", hint="run build/setup.sh")
        t.file(host, p.resolve(), "tools", 0o755)
        tools.append(p.resolve())
        for ln in links:
            t.symlink(f"usr/sbin/{ln}", os.path.basename(host), "tools")
    for name, target in layout.COMPONENT_TOOLS.items():
        t.symlink(layout.member(str(layout.LIBEXEC / name)), target, "tools")
    for plugin in sorted(layout.XTABLES.glob("*.so")):
        t.file(str(plugin), plugin, "tools", 0o644)
        tools.append(plugin)
    return tools


def assemble(inp: Inputs, workdir: Path) -> Tree:
    inp = Inputs(*(p.resolve() for p in (inp.bundle, inp.components, inp.images, inp.rootfs, inp.kernel_root,
                                          inp.busybox)), [p.resolve() for p in inp.extra])
    t = skeleton(layout.SKELETON)
    t.symlink("var/run", "../run", "base")
    t.symlink(layout.member(layout.LOG_LINK), str(layout.Paths.of(layout.DATA_DIR, layout.RUN_DIR).logs), "base")
    for overlay in [inp.rootfs, *inp.extra]:
        t.tree(overlay, "", "base")

    # k4s: the frozen bundle; /init and the applet names are symlinks into it.
    exe = inp.bundle / "k4s"
    if not exe.exists():
        raise K4sError(f"frozen k4s not found at {exe}", hint="run `make k4s`")
    t.tree(inp.bundle, layout.member(layout.BUNDLE), "k4s")
    t.symlink("init", str(layout.K4S), "base")
    t.symlink("usr/bin/k4s", str(layout.K4S), "base")
    for d, names in layout.APPLET_LINKS.items():
        for n in names:
            t.symlink(layout.member(f"{d}/{n}"), str(layout.K4S), "base")

    runtime = [p for p in add_binaries(t, inp.components, node_binaries()) if p.name != layout.KUBE_MULTICALL]
    tools = add_tools(t, inp.busybox)

    tars = sorted(inp.images.glob("*.tar"))
    if not tars:
        raise K4sError(f"no airgap images in {inp.images}", hint="run `make images`")
    for tar in tars:
        t.file(layout.member(layout.IMAGES / tar.name), tar, "images", 0o644)

    # shared libraries: the bundle's (bundle_elves), then the components' and tools' plain
    elves = [*bundle_elves(inp.bundle), *((p, None) for p in [*runtime, *tools] if is_elf(p))]
    add_closure(t, elves, skip_dir=inp.bundle / "_internal", link_dir=str(layout.BUNDLE / "_internal"))

    wanted = [ln.split("#")[0].strip()
              for ln in (inp.rootfs / layout.member(layout.MODULES_LIST)).read_text().splitlines()]
    add_modules(t, inp.kernel_root, [*(w for w in wanted if w), *layout.DATA_DISK_MODULES,
                                                  *layout.SEALED_DISK_MODULES, *layout.UEFI_MODULES], workdir, "modules")
    return t


def build(inp: Inputs, out: Path, method: str = "zstd", level: int | None = None,
          cache: Path | None = None, progress: bool = True, payload: str = "squashfs") -> list[Segment]:
    """Write the initramfs to out (atomically); one segment per part."""
    with tempfile.TemporaryDirectory(prefix="k4s-image-") as tmp:
        tree = assemble(inp, Path(tmp))
        squashed: dict[str, tuple[int, int, str]] = {}
        if payload == "squashfs":
            for part in layout.SQUASHFS_PARTS:
                unpacked, sq = squash_part(tree, part, cache)
                squashed[part] = (unpacked, *digest(sq))
            del tree.entries["init"]
            tree.data("init", stage0_init(inp.kernel_root), "base", 0o755)
        blob, segs = pack(tree, method, level, cache, squashed, progress)
        write_atomic(out, blob)
    return segs
