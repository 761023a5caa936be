"""A TPM 2.0 through the kernel: extend one PCR (TPM2_PCR_Extend, SHA-256 bank) and read one
(the kernel's sysfs). What stage 1 measures before it kexecs stage 2. The command is the TPM 2.0
library spec's (part 3, 22.2), with the empty password session every PCR in 0-15 accepts:
nothing here is cryptography, the TPM does the hashing. Standard library only: stage 1 imports it.
"""

from __future__ import annotations

import os
import struct
from pathlib import Path

from k4s.errors import K4sError

DEVICE = Path("/dev/tpmrm0")  # the kernel's resource manager: no other user's sessions in the way
SYSFS = Path("/sys/class/tpm/tpm0")
MEASURED_PCR = 15  # stage 1 extends it with the payload it verified (0-14: firmware, loaders, stub, shim)
TPM_ST_SESSIONS, TPM_CC_PCR_EXTEND, TPM_RS_PW, TPM_ALG_SHA256 = 0x8002, 0x182, 0x40000009, 0x000B


def present(device: Path = DEVICE) -> bool:
    return device.exists()


def extend_command(pcr: int, digest: bytes) -> bytes:
    """TPM2_PCR_Extend(pcr, {sha256: digest}) with an empty password authorization."""
    if len(digest) != 32 or not 0 <= pcr <= 23:
        raise ValueError("a PCR 0-23 and a 32-byte SHA-256 digest")
    auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)  # session handle, empty nonce, attributes, empty password
    body = struct.pack(">II", pcr, len(auth)) + auth + struct.pack(">IH", 1, TPM_ALG_SHA256) + digest
    return struct.pack(">HII", TPM_ST_SESSIONS, 10 + len(body), TPM_CC_PCR_EXTEND) + body


def extend(pcr: int, digest: bytes, device: Path = DEVICE) -> None:
    try:
        fd = os.open(device, os.O_RDWR)
        try:
            os.write(fd, extend_command(pcr, digest))
            response = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError as e:
        raise K4sError(f"cannot extend PCR {pcr}: {device}: {e.strerror}",
                       hint="the TPM went away or is busy; boot without one to skip measuring") from None
    if len(response) < 10:
        raise K4sError(f"cannot extend PCR {pcr}: a {len(response)}-byte answer from {device}", hint="a TPM 2.0?")
    _, _, rc = struct.unpack(">HII", response[:10])
    if rc != 0:
        raise K4sError(f"cannot extend PCR {pcr}: the TPM answered {rc:#x}", hint="is the SHA-256 bank allocated?")


def read(pcr: int, sysfs: Path = SYSFS) -> str:
    """The PCR's SHA-256 bank as lowercase hex, "" where the kernel does not show it."""
    try:
        return (sysfs / "pcr-sha256" / str(pcr)).read_text().strip().lower()
    except OSError:
        return ""
