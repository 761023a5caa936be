"""The first stage (LinuxBoot / PXE): one part, base. The lean frozen k4s (build/stage1.spec)
as /init, its shared libraries, the NIC modules and what payloads are verified with: the
public key, the lowest serial, and for https payloads the CA bundle (k4s.layout's STAGE1_*).
No busybox, no components, no shell."""

from __future__ import annotations

import stat
import tempfile
from pathlib import Path

from k4s import layout
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import cpio, manifest
from k4s.image.cpio import Tree
from k4s.mkimage.appliance import skeleton
from k4s.mkimage.elf import add_closure, bundle_elves
from k4s.mkimage.modules import add_modules
from k4s.mkimage.segments import Segment


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
    bundle, kernel_root = bundle.resolve(), kernel_root.resolve()
    exe = bundle / "k4s"
    if not exe.exists():
        raise K4sError(f"frozen stage-1 k4s not found at {exe}", hint="run `make stage1`")
    manifest.public_key(pubkey)  # a key, not anything else
    t = skeleton(layout.STAGE1_SKELETON)
    t.data(layout.member(layout.MODULES_LIST), "\n".join(layout.STAGE1_MODULES).encode() + b"\n", "base")
    t.file(layout.member(layout.STAGE1_PUBLIC_KEY), pubkey.resolve(), "base", 0o644)
    t.data(layout.member(layout.STAGE1_MIN_SERIAL), f"{min_serial}\n".encode(), "base", 0o644)
    if payload_ca is not None:
        check_ca_bundle(payload_ca)
        t.file(layout.member(layout.STAGE1_PAYLOAD_CA), payload_ca.resolve(), "base", 0o644)
    t.tree(bundle, layout.member(layout.BUNDLE), "base")
    t.symlink("init", str(layout.K4S), "base")
    for n in layout.STAGE1_LINKS:
        t.symlink(f"usr/sbin/{n}", str(layout.K4S), "base")
    add_closure(t, bundle_elves(bundle), skip_dir=bundle / "_internal", part="base")
    add_modules(t, kernel_root, [*layout.STAGE1_MODULES, *layout.UEFI_MODULES], workdir, "base")
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
