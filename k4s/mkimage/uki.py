"""Stage 1 as a unified kernel image (UKI): one PE file the firmware verifies and runs.

systemd's EFI stub with the kernel, stage 1's initramfs (its payload key, minimum serial and
CA bundle inside, as in the flash payload), the command line and an os-release, each as a
section after the stub's own, then signed with the owner's db key. Under Secure Boot the stub
boots the embedded command line and ignores one a boot loader passes, so the payload URL and
everything else stage 1 is told are covered by the signature too.
"""

from __future__ import annotations

import struct
import tempfile
from pathlib import Path

from k4s.errors import K4sError
from k4s.host import secureboot

STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")  # Debian: systemd-boot-efi
OS_RELEASE = 'NAME="k4s"\nID=k4s\nPRETTY_NAME="k4s stage 1"\n'
LIMIT = 16 << 20  # a flash part's or a firmware payload's budget, as stage 1's


def _align(n: int, to: int) -> int:
    return (n + to - 1) // to * to


def image_end(pe: bytes, what: Path) -> tuple[int, int]:
    """Where sections may be added to a PE32+ image, as the address objcopy's
    --change-section-vma takes (ImageBase + SizeOfImage), and its SectionAlignment. As ukify
    does: Debian's stub has ImageBase 0, another may not."""
    try:
        (lfanew,) = struct.unpack_from("<I", pe, 0x3C)
        if pe[:2] != b"MZ" or pe[lfanew:lfanew + 4] != b"PE\0\0":
            raise ValueError("no PE signature")
        opt = lfanew + 24
        (magic,) = struct.unpack_from("<H", pe, opt)
        if magic != 0x20B:
            raise ValueError(f"optional header magic {magic:#x}, not PE32+")
        (base,) = struct.unpack_from("<Q", pe, opt + 24)
        (alignment,) = struct.unpack_from("<I", pe, opt + 32)
        (size,) = struct.unpack_from("<I", pe, opt + 56)
    except (struct.error, ValueError) as e:
        raise K4sError(f"{what} is not an x86-64 EFI stub: {e}", hint="run `make setup` (systemd-boot-efi)") from None
    return base + size, alignment


def reproducible(pe: Path) -> None:
    """objcopy stamps the PE header with the time (and a checksum over it): zero both, as the
    stub ships, so one input gives one UKI, and one signature."""
    with open(pe, "r+b") as f:
        (lfanew,) = struct.unpack("<I", (f.seek(0x3C), f.read(4))[1])
        f.seek(lfanew + 8)
        f.write(b"\0" * 4)   # COFF TimeDateStamp
        f.seek(lfanew + 24 + 64)
        f.write(b"\0" * 4)   # optional header CheckSum (firmware does not check it)


def build(kernel: Path, initrd: Path, cmdline: str, out: Path, keys: Path, stub: Path = STUB) -> int:
    """Write the signed UKI to `out`; its size."""
    for p, hint in ((stub, "run `make setup` (it installs systemd-boot-efi)"), (kernel, "run `make image`"),
                    (initrd, "run `make stage1`")):
        if not p.is_file():
            raise K4sError(f"{p} not found", hint=hint)
    if "\n" in cmdline or "\0" in cmdline:
        raise K4sError("the UKI's command line has a newline or NUL", hint="pass one line of kernel arguments")
    secureboot.require(keys, "db", private=True)
    end, alignment = image_end(stub.read_bytes()[:4096], stub)
    with tempfile.TemporaryDirectory(prefix="k4s-uki-") as work:
        osrel, line = Path(work) / "os-release", Path(work) / "cmdline"
        osrel.write_text(OS_RELEASE)
        line.write_text(cmdline.strip())
        args, vma = [], _align(end, alignment)
        for name, path in ((".osrel", osrel), (".cmdline", line), (".initrd", initrd), (".linux", kernel)):
            args += ["--add-section", f"{name}={path}", "--change-section-vma", f"{name}={vma:#x}"]
            vma = _align(vma + path.stat().st_size, alignment)
        unsigned = Path(work) / "unsigned.efi"
        secureboot.run(["objcopy", *args, str(stub), str(unsigned)])
        reproducible(unsigned)
        secureboot.sign(unsigned, out, keys)
    return out.stat().st_size
