"""The appliance image: a tree of parts packed as concatenated, separately
compressed newc cpio segments (the kernel unpacks them in order).

Parts, in segment order (layout.PARTS): base (symlinks, /dev nodes, the rootfs
overlay, stage 0), k4s (the frozen bundle), libs (the ldd closure of every ELF),
tools (busybox, nft, iptables, conntrack, mke2fs), kubernetes (the kube multicall),
runtime (containerd, shim, runc, CNI), images (airgap OCI tarballs), modules
(kernel modules with depmod output). One segment per part makes the size
report exact and lets an unchanged part reuse its compressed segment from the
cache. Where each thing goes is k4s.layout; which binaries the node runs is
the component modules' (components.binaries) and the addons'.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from k4s import layout
from k4s.boot import kmod
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import cpio
from k4s.image.cpio import Tree

KUBE_MULTICALL = "kube"  # the file every Kubernetes component name links to: the kubernetes part
HOST_TOOLS = {  # host path -> extra names (links) in the image
    "/usr/sbin/nft": (),
    "/usr/sbin/xtables-nft-multi": ("iptables", "iptables-save", "iptables-restore", "ip6tables",
                                    "ip6tables-save", "ip6tables-restore"),
    "/usr/sbin/conntrack": (),
    "/usr/sbin/mke2fs": ("mkfs.ext4",),  # formats a blank data disk (k4s.boot.datadisk)
}
XTABLES = Path("/usr/lib/x86_64-linux-gnu/xtables")  # iptables loads its matches and targets from here


# --- ELF dependencies --------------------------------------------------------------------

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
                part: str = "libs") -> None:
    for path, libpath in elves:
        for lib in ldd(path, libpath):
            if skip_dir and Path(lib).resolve().is_relative_to(skip_dir.resolve()):
                continue  # the bundle carries it
            norm = tree.norm(lib)
            if norm not in tree.entries:
                tree.file(lib, Path(lib).resolve(), part)


def bundle_elves(bundle: Path) -> list[tuple[Path, str | None]]:
    """A frozen k4s's ELF files for ldd: the launcher without LD_LIBRARY_PATH (it needs the
    system libz before PyInstaller sets its paths), the bundle's .so files with it."""
    internal = bundle / "_internal"
    return [(bundle / "k4s", None), *((p, str(internal)) for p in sorted(internal.rglob("*.so*")) if is_elf(p))]


# --- kernel modules ----------------------------------------------------------------------

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


def run(argv: list[str]) -> str:
    r = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL)
    if r.returncode != 0:
        raise K4sError(f"{argv[0]} failed: {r.stderr.strip()[:300]}", hint=f"run `{' '.join(argv)}` to see why")
    return r.stdout


# --- assembling --------------------------------------------------------------------------

@dataclass
class Inputs:
    bundle: Path          # out/k4s (the frozen onedir)
    components: Path      # out/components/bin
    images: Path          # out/images
    rootfs: Path          # rootfs/
    kernel_root: Path     # the unpacked linux-image package
    busybox: Path = Path("/bin/busybox")
    extra: list[Path] = field(default_factory=list)  # more overlay trees


def kernel_release(kernel_root: Path) -> str:
    mods = sorted(p.name for p in (kernel_root / "lib" / "modules").iterdir())
    if not mods:
        raise K4sError(f"no kernel modules under {kernel_root}", hint="run build/setup.sh to fetch the kernel")
    return mods[-1]


def node_binaries() -> list[str]:
    """Every program under bin-dir the node runs: the components' and the addons'."""
    from k4s.cluster import addons, components

    return list(dict.fromkeys([*components.binaries(), *addons.BINARIES]))


def add_binaries(t: Tree, bindir: Path, names: list[str]) -> list[Path]:
    """The named programs from the components' bin dir into LIBEXEC. A name that is a link to
    another file of that dir (kube-apiserver -> kube) stays a link; the real files are the
    kubernetes part (the kube multicall) or the runtime part. The real files, for ldd."""
    libexec = layout.member(layout.LIBEXEC)
    real: list[Path] = []
    for name in names:
        p = bindir / name
        if not p.exists():
            raise K4sError(f"component {name} not found in {bindir}", hint="run `make components`")
        target = os.readlink(p) if p.is_symlink() else ""
        if target and "/" not in target:  # a name of a multicall in the same dir
            file = target
            t.symlink(f"{libexec}/{name}", target, "kubernetes" if target == KUBE_MULTICALL else "runtime")
        else:
            file = name
        if f"{libexec}/{file}" not in t.entries:
            src = (bindir / file).resolve()
            t.file(f"{libexec}/{file}", src, "kubernetes" if file == KUBE_MULTICALL else "runtime", 0o755)
            real.append(src)
    return real


# The nodes /init needs before devtmpfs is mounted: without urandom Python dies at start.
DEVICES = (("dev/console", 5, 1, 0o600), ("dev/null", 1, 3, 0o666), ("dev/urandom", 1, 9, 0o666),
           ("dev/random", 1, 8, 0o666), ("dev/tty", 5, 0, 0o666), ("dev/kmsg", 1, 11, 0o644))


def skeleton(dirs: Iterable[str | Path]) -> Tree:
    """The root both images start from (part base): merged-/usr links, the directories, the
    device nodes, an empty resolv.conf."""
    t = Tree(merged=dict(layout.MERGED))
    for name, target in layout.MERGED.items():
        t.symlink(name, target, "base")
    for d in dirs:
        t.dir(layout.member(d), "base", 0o1777 if str(d) == "tmp" else 0o755)
    for path, major, minor, mode in DEVICES:
        t.dev(path, major, minor, mode)
    t.data("etc/resolv.conf", b"", "base")
    return t


def assemble(inp: Inputs, workdir: Path) -> Tree:
    inp = Inputs(*(p.resolve() for p in (inp.bundle, inp.components, inp.images, inp.rootfs, inp.kernel_root,
                                          inp.busybox)), [p.resolve() for p in inp.extra])
    t = skeleton(("proc", "sys", "dev", "run", "tmp", "root", "etc", layout.DATA_DIR, "var/log", "usr/bin",
                  "usr/sbin", "usr/lib64", "mnt"))
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

    # upstream components
    runtime = [p for p in add_binaries(t, inp.components, node_binaries()) if p.name != KUBE_MULTICALL]

    # tools the node execs: busybox for mount/umount/sh and friends, nft, iptables-nft, conntrack
    t.file("usr/bin/busybox", inp.busybox.resolve(), "tools", 0o755)
    ours = {n for names in layout.APPLET_LINKS.values() for n in names}
    ours |= {n for host, links in HOST_TOOLS.items() for n in (os.path.basename(host), *links)}  # the real ones
    for applet in run([str(inp.busybox), "--list-full"]).split():
        if os.path.basename(applet) not in ours and t.norm(applet) not in t.entries:
            t.symlink(applet, "/usr/bin/busybox", "tools")
    tools = []
    for host, links in HOST_TOOLS.items():
        p = Path(host)
        if not p.exists():
            raise K4sError(f"{host} not found on the build host", hint="run build/setup.sh")
        t.file(host, p.resolve(), "tools", 0o755)
        tools.append(p.resolve())
        for ln in links:
            t.symlink(f"usr/sbin/{ln}", os.path.basename(host), "tools")
    for plugin in sorted(XTABLES.glob("*.so")):
        t.file(str(plugin), plugin, "tools", 0o644)
        tools.append(plugin)

    # airgap images
    tars = sorted(inp.images.glob("*.tar"))
    if not tars:
        raise K4sError(f"no airgap images in {inp.images}", hint="run `make images`")
    for tar in tars:
        t.file(layout.member(layout.IMAGES / tar.name), tar, "images", 0o644)

    # shared libraries: the bundle's (bundle_elves), then the components' and tools' plain
    elves = [*bundle_elves(inp.bundle), *((p, None) for p in [*runtime, *tools] if is_elf(p))]
    add_closure(t, elves, skip_dir=inp.bundle / "_internal")

    wanted = [ln.split("#")[0].strip()
              for ln in (inp.rootfs / layout.member(layout.MODULES_LIST)).read_text().splitlines()]
    from k4s.boot import datadisk

    add_modules(t, inp.kernel_root, [*(w for w in wanted if w), *datadisk.MODULES], workdir, "modules")
    return t


STAGE0_MODULES = ("loop", "squashfs")


def stage0_init(kernel_root: Path) -> bytes:
    """/init when the k4s bundle itself is a squashfs part: busybox loads loop and squashfs,
    mounts the bundle, and execs k4s init, which stays PID 1. Anything failing here ends in
    a poweroff with the reason on the console, never in a kernel panic."""
    release = kernel_release(kernel_root)
    idx = kmod.Index.load(str(kernel_root), release)
    kos = [f"/usr/lib/modules/{release}/{idx.deps[n][0]}" for w in STAGE0_MODULES for n in idx.plan(w)]
    bundle = layout.part_mount("k4s")
    return f"""#!/usr/bin/busybox sh
# k4s stage 0, written by mkimage. The k4s bundle is a squashfs, kept compressed
# in RAM like the components: mount it and hand PID 1 over to k4s init.
b=/usr/bin/busybox
$b mount -t proc -o nosuid,nodev,noexec proc /proc
# A root that containers can pivot_root(2) out of: the kernel refuses it on the initramfs
# itself (the root of every mount namespace: its own parent in mountinfo), and runc then only
# moves and chroots, which a process with CAP_SYS_CHROOT can leave. A bind mount of the RAM
# root moved over / has a parent: nothing is copied, and the script runs again inside it.
if [ "$($b awk '$5 == "/" {{ r = ($1 == $2) }} END {{ print r }}' /proc/self/mountinfo)" = 1 ]; then
    $b umount /proc
    $b mkdir -p /.root && $b mount --bind / /.root && cd /.root && $b mount --move . / && exec $b chroot . /init "$@"
    echo "k4s stage 0: warning: the root stays the initramfs; containers will chroot, not pivot_root"
    $b mount -t proc -o nosuid,nodev,noexec proc /proc
fi
$b mount -t devtmpfs -o nosuid,mode=0755 devtmpfs /dev
fail() {{
    echo "k4s stage 0: error: $1"
    case " $($b cat /proc/cmdline) " in  # k4s.on-failure, as k4s init would read it
        *" k4s.on-failure=reboot "*) exec $b reboot -f ;;
        *" k4s.on-failure=halt "*) exec $b halt -f ;;
    esac
    exec $b poweroff -f
}}
# Booted by stage 1: it left the signed hash of every part (the last initrd segment).
# Each part is checked before anything is mounted, the k4s bundle first of all.
if [ -f {layout.PARTS_CHECK} ]; then
    bad=$(cd / && $b sha256sum -c {layout.PARTS_CHECK} 2>&1 | $b grep -v ': OK$' | $b head -1)
    [ -z "$bad" ] || fail "$bad: differs from the signed manifest (hint: the payload was altered after \
stage 1 verified it; nothing was mounted)"
    echo "k4s stage 0: $($b wc -l < {layout.PARTS_CHECK}) parts match the signed manifest"
fi
for ko in {" ".join(dict.fromkeys(kos))}; do
    $b insmod "$ko" 2>/dev/null
done
if $b mount -t squashfs -o loop,ro {bundle}.squashfs {bundle}; then
    exec {layout.K4S} init "$@"
fi
fail "cannot mount {bundle}.squashfs (hint: rebuild the image with make image; \
the kernel needs the loop and squashfs modules)"
""".encode()


# The unit squashfs decompresses: a page-cache miss of a binary costs one block, and fills
# the page cache with all of it. 1M packed 4% smaller, but in a 512 MiB machine, where the
# binaries' pages are dropped and read back, every miss decompressed 256 pages to use one.
SQUASHFS_BLOCK = "128K"
SQUASHFS_OPTIONS = ("-comp", "zstd", "-Xcompression-level", "19", "-b", SQUASHFS_BLOCK, "-all-root", "-no-xattrs",
                    "-mkfs-time", "0", "-all-time", "0")


def mksquashfs(entries: list[cpio.Entry], prefix: str, out: Path) -> None:
    """Pack the part's files (paths relative to prefix) into a reproducible zstd squashfs."""
    with tempfile.TemporaryDirectory(prefix="k4s-sq-") as tmp:
        stage = Path(tmp, "root")
        stage.mkdir()
        for e in entries:
            rel = e.name[len(prefix):].lstrip("/")
            if not rel:
                continue
            dst = stage / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            if stat.S_ISDIR(e.mode):
                dst.mkdir(exist_ok=True)
            elif stat.S_ISLNK(e.mode):
                os.symlink(e.data.decode(), dst)
            elif e.source is not None:
                if _same_fs(e.source, dst.parent):
                    os.link(e.source, dst)  # no copy of 100+ MB binaries when the cache shares the fs
                else:
                    shutil.copyfile(e.source, dst)
                os.chmod(dst, stat.S_IMODE(e.mode))
        run(["mksquashfs", str(stage), str(out), "-noappend", "-quiet", *SQUASHFS_OPTIONS, "-processors", "2"])


def _same_fs(a: Path, b: Path) -> bool:
    return os.stat(a).st_dev == os.stat(b).st_dev


def squash_part(tree: Tree, part: str, cache: Path | None) -> tuple[int, Path]:
    """Replace a part's files by one squashfs file and symlinks into its mount point; unpacked
    bytes and the squashfs file."""
    entries = [e for e in tree.segment(part) if e.part == part and not stat.S_ISDIR(e.mode)]
    prefix = os.path.commonpath([os.path.dirname(e.name) for e in entries])
    unpacked = sum(e.length for e in entries)
    key = hashlib.sha256(cpio.bytes_of(entries) + " ".join(SQUASHFS_OPTIONS).encode()).hexdigest()
    out = (cache or Path(tempfile.gettempdir())) / f"{part}-{key}.squashfs"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        print(f"mkimage: mksquashfs {part} ({unpacked / 1e6:.1f} MB)", flush=True)
        tmp = out.with_suffix(".tmp")
        mksquashfs(entries, prefix, tmp)
        tmp.replace(out)
    # the part's directories below the prefix live in the squashfs too
    for name in [n for n, e in tree.entries.items()
                 if e.part == part and stat.S_ISDIR(e.mode) and n.startswith(prefix + "/")]:
        del tree.entries[name]
    for e in entries:
        del tree.entries[e.name]
        rel = e.name[len(prefix):].lstrip("/")
        top = rel.split("/")[0]
        link = f"{prefix}/{top}"
        if link not in tree.entries:
            tree.symlink(link, f"{layout.part_mount(part)}/{top}", part)
    tree.file(layout.member(layout.part_squashfs(part)), out, part, 0o444)
    tree.dir(layout.member(layout.part_mount(part)), part)
    return unpacked, out


@dataclass
class Segment:
    part: str
    files: int
    unpacked: int
    compressed: int
    cached: bool
    squashfs_sha256: str = ""  # a squashfs part: the file's hash and size, for the signed manifest
    squashfs_size: int = 0


def build(inp: Inputs, out: Path, method: str = "zstd", level: int | None = None,
          cache: Path | None = None, progress: bool = True, payload: str = "squashfs") -> list[Segment]:
    """Write the initramfs to out (atomically); one segment per part."""
    with tempfile.TemporaryDirectory(prefix="k4s-image-") as tmp:
        tree = assemble(inp, Path(tmp))
        unpacked: dict[str, int] = {}
        hashes: dict[str, tuple[int, str]] = {}
        if payload == "squashfs":
            from k4s.image.manifest import digest

            for part in layout.SQUASHFS_PARTS:
                unpacked[part], sq = squash_part(tree, part, cache)
                hashes[part] = digest(sq)
            del tree.entries["init"]
            tree.data("init", stage0_init(inp.kernel_root), "base", 0o755)
        segs: list[Segment] = []
        blobs: list[bytes] = []
        for part in layout.PARTS:
            entries = tree.segment(part)
            if not entries:
                continue
            raw = cpio.bytes_of(entries)
            # a squashfs is compressed already: the kernel just copies it
            seg_method = "none" if part in unpacked else method
            key = hashlib.sha256(raw + f"{seg_method}:{level}".encode()).hexdigest()
            cached_path = cache / f"{key}.{seg_method}" if cache and seg_method != "none" else None
            if cached_path and cached_path.exists():
                blob, hit = cached_path.read_bytes(), True
            else:
                if progress and seg_method != "none":
                    print(f"mkimage: compressing {part} ({len(raw) / 1e6:.1f} MB, {seg_method})", flush=True)
                blob, hit = cpio.compress(raw, seg_method, level), False
                if cached_path:
                    write_atomic(cached_path, blob)
            # The kernel takes a plain cpio segment only at a 4-byte aligned offset,
            # and skips zero bytes between segments: pad every segment.
            blobs.append(blob + b"\0" * (-len(blob) % 4))
            files = sum(1 for e in entries if stat.S_ISREG(e.mode))
            size, sha = hashes.get(part, (0, ""))
            segs.append(Segment(part, files, unpacked.get(part, len(raw)), len(blob), hit, sha, size))
        write_atomic(out, b"".join(blobs))
    return segs


# --- stage 1 -------------------------------------------------------------------------------

STAGE1_MODULES = ("virtio_pci", "virtio_net", "e1000", "e1000e")  # the NIC; DHCP needs AF_PACKET (built in)


def check_ca_bundle(path: Path) -> None:
    """A PEM bundle of CA certificates that TLS can load (public: it goes into the image)."""
    import ssl

    try:
        text = path.read_text()
        ctx = ssl.create_default_context(cafile=str(path))
    except (OSError, UnicodeDecodeError, ssl.SSLError) as e:
        raise K4sError(f"{path} is not a PEM CA bundle: {e}", hint="pass the CA certificate(s) that sign the "
                       "payload server's certificate, PEM") from None
    if "PRIVATE KEY" in text:
        raise K4sError(f"{path} holds a private key", hint="pass only the CA's certificate: the image is public")
    if not ctx.get_ca_certs():
        raise K4sError(f"{path} holds no CA certificate", hint="a CA certificate has basicConstraints CA:TRUE")


def assemble_stage1(bundle: Path, pubkey: Path, kernel_root: Path, workdir: Path,
                    payload_ca: Path | None = None, min_serial: int = 0) -> Tree:
    """The first stage: the lean frozen k4s (build/stage1.spec) as /init, its shared
    libraries, the NIC modules and the public key that every payload must verify with
    (and, for https payloads, the CA bundle their server must verify with).
    No busybox, no components, no shell."""
    from k4s.image import manifest

    bundle, kernel_root = bundle.resolve(), kernel_root.resolve()
    exe = bundle / "k4s"
    if not exe.exists():
        raise K4sError(f"frozen stage-1 k4s not found at {exe}", hint="run `make stage1`")
    manifest.public_key(pubkey)  # a key, not anything else
    t = skeleton(("proc", "sys", "dev", "run", "tmp", "etc/k4s", "usr/bin", "usr/sbin", "usr/lib64"))
    t.data(layout.member(layout.MODULES_LIST), "\n".join(STAGE1_MODULES).encode() + b"\n", "base")
    t.file(f"etc/k4s/{manifest.PUBLIC_KEY}", pubkey.resolve(), "base", 0o644)
    t.data(f"etc/k4s/{manifest.MIN_SERIAL}", f"{min_serial}\n".encode(), "base", 0o644)
    if payload_ca is not None:
        check_ca_bundle(payload_ca)
        t.file(f"etc/k4s/{manifest.PAYLOAD_CA}", payload_ca.resolve(), "base", 0o644)
    t.tree(bundle, layout.member(layout.BUNDLE), "base")
    t.symlink("init", str(layout.K4S), "base")
    for n in ("modprobe", "kexec", "poweroff", "reboot"):
        t.symlink(f"usr/sbin/{n}", str(layout.K4S), "base")
    add_closure(t, bundle_elves(bundle), skip_dir=bundle / "_internal", part="base")
    add_modules(t, kernel_root, list(STAGE1_MODULES), workdir, "base")
    return t


def build_stage1(bundle: Path, pubkey: Path, kernel_root: Path, out: Path, method: str = "xz",
                 payload_ca: Path | None = None, min_serial: int = 0) -> Segment:
    """Write the stage-1 initramfs (one segment; xz by default: it must fit beside the kernel)."""
    with tempfile.TemporaryDirectory(prefix="k4s-stage1-") as tmp:
        t = assemble_stage1(bundle, pubkey, kernel_root, Path(tmp), payload_ca, min_serial)
        entries = t.segment("base")
        raw = cpio.bytes_of(entries)
        blob = cpio.compress(raw, method)
        write_atomic(out, blob + b"\0" * (-len(blob) % 4))
    return Segment("stage1", sum(1 for e in entries if stat.S_ISREG(e.mode)), len(raw), len(blob), False)


def report_json(segs: list[Segment]) -> str:
    """The size table as data: what the bench reads (the text table is for people)."""
    parts = [{"name": layout.part_squashfs(s.part).name, "size": s.squashfs_size, "sha256": s.squashfs_sha256}
             for s in segs if s.squashfs_sha256]
    return json.dumps({"segments": [asdict(s) for s in segs], "parts": parts,
                       "total": {"files": sum(s.files for s in segs), "unpacked": sum(s.unpacked for s in segs),
                                 "compressed": sum(s.compressed for s in segs)}}, indent=1) + "\n"


def report(segs: list[Segment]) -> str:
    lines = [f"{'PART':<12} {'FILES':>6} {'UNPACKED':>10} {'COMPRESSED':>11}"]
    for s in segs:
        lines.append(f"{s.part:<12} {s.files:>6} {s.unpacked / 1e6:>8.1f}MB {s.compressed / 1e6:>9.1f}MB"
                     + ("  (cached)" if s.cached else ""))
    lines.append(f"{'total':<12} {sum(s.files for s in segs):>6} {sum(s.unpacked for s in segs) / 1e6:>8.1f}MB "
                 f"{sum(s.compressed for s in segs) / 1e6:>9.1f}MB")
    return "\n".join(lines)
