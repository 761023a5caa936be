"""A data disk only the signed payload can read: LUKS2, its key sealed to the TPM.

    k4s.data=LABEL=K4SDATA k4s.data-format=1 k4s.data-encrypt=tpm

A blank disk is formatted as LUKS2 (cryptsetup; AES-XTS, the kernel's dm-crypt) with a
random 32-byte key that exists only in RAM and in the TPM: the TPM seals it to PCR 7 (the
firmware's Secure Boot state and keys) and PCR 15 (what stage 1 measured: the signed
manifest, every kernel and initrd), and the sealed object's two halves go in the volume's
own header, as a LUKS2 token. At every boot the key is unsealed and the volume opened with
it; the filesystem inside is the same ext4 a plain data disk has.

So the disk opens only on the machine whose TPM sealed it, and only under the payload and
Secure Boot keys it was sealed under. Moved to another machine, or booted under another
payload (even one the same owner signed: another serial is another manifest), it stays
locked, and the console says which: "PCR 15 (the payload) holds another value than when
its key was sealed", or "sealed by another machine's TPM". Nothing is written to a disk
that does not open.

What it protects against: a disk taken out of the machine, a machine booted with other
code (a different payload, Secure Boot off or other keys). What it does not: anyone who
runs the sealed payload on this machine, which is the point. The header's PCR values are
public (`k4s verify --pcr` predicts them), so they are kept in the token to say which one
moved. A new payload means a new seal: upgrading sealed nodes in place is not done yet
(systemd's signed PCR policies are the model).
"""

from __future__ import annotations

import base64
import json
import os
import struct
import subprocess
from dataclasses import dataclass
from pathlib import Path

from k4s import events, log
from k4s.errors import K4sError
from k4s.sys import process, tpm

MAGIC = b"LUKS\xba\xbe"
BINARY_HEADER = 4096            # LUKS2: the JSON area follows the 4 KiB binary header
MAX_HEADER = 4 << 20            # the largest LUKS2 header (binary + JSON) the spec allows
LABEL_AT, LABEL_LEN = 24, 48
KEYSLOTS_END = 16 << 20         # cryptsetup's default LUKS2 data offset: what a failed format zeroes
TOKEN_TYPE = "k4s-tpm2"
MAPPED = "k4sdata"              # /dev/mapper/k4sdata: the opened volume
KEY_BYTES = 32
CRYPTSETUP = "cryptsetup"
TIMEOUT = 120.0
WHAT = {tpm.SECURE_BOOT_PCR: "the Secure Boot state and keys", tpm.MEASURED_PCR: "the payload"}
SEALED_TO = "+".join(map(str, tpm.SEALED_PCRS))  # "7+15", as the events and the README name them


def is_luks(head: bytes) -> bool:
    return head[:len(MAGIC)] == MAGIC


def luks_label(head: bytes) -> str:
    """A LUKS2 header's label ("" for LUKS1, which has none)."""
    if not is_luks(head) or len(head) < LABEL_AT + LABEL_LEN or struct.unpack_from(">H", head, 6)[0] != 2:
        return ""
    return head[LABEL_AT:LABEL_AT + LABEL_LEN].split(b"\0", 1)[0].decode("utf-8", "replace")


def metadata(dev: Path) -> dict:
    """A LUKS2 volume's JSON metadata (the primary header's copy); bounded by the spec's size."""
    try:
        with open(dev, "rb") as f:
            head = f.read(BINARY_HEADER)
            if not is_luks(head) or struct.unpack_from(">H", head, 6)[0] != 2:
                raise K4sError(f"data disk {dev}: not a LUKS2 volume", hint="k4s seals only LUKS2 volumes it made")
            size = struct.unpack_from(">Q", head, 8)[0]
            if not BINARY_HEADER < size <= MAX_HEADER:
                raise K4sError(f"data disk {dev}: its LUKS2 header claims {size} bytes",
                               hint="the header is damaged; restore it from a backup (cryptsetup luksHeaderRestore)")
            area = f.read(size - BINARY_HEADER)
    except OSError as e:
        raise K4sError(f"data disk {dev}: cannot read it: {e.strerror}", hint="check the disk") from None
    try:
        meta = json.loads(area.split(b"\0", 1)[0])
    except ValueError:
        raise K4sError(f"data disk {dev}: its LUKS2 metadata is not JSON",
                       hint="the header is damaged; restore it from a backup (cryptsetup luksHeaderRestore)") from None
    if not isinstance(meta, dict):
        raise K4sError(f"data disk {dev}: its LUKS2 metadata is not an object", hint="the header is damaged")
    return meta


@dataclass(frozen=True)
class Token:
    """What a sealed volume's header keeps: the sealed key's two halves and the PCR values it was
    sealed to (public: `k4s verify --pcr` predicts PCR 15)."""
    sealed: tpm.Sealed
    values: dict[int, str]  # PCR -> hex, at sealing time

    def as_json(self, keyslot: int = 0) -> dict:
        return {"type": TOKEN_TYPE, "keyslots": [str(keyslot)], "tpm2-pcr-bank": "sha256",
                "tpm2-pcrs": list(self.sealed.pcrs), "tpm2-policy-hash": self.sealed.policy.hex(),
                "tpm2-pcr-values": {str(p): v for p, v in sorted(self.values.items())},
                "tpm2-public": base64.b64encode(self.sealed.public).decode(),
                "tpm2-private": base64.b64encode(self.sealed.private).decode()}

    @classmethod
    def find(cls, meta: dict, where: str) -> Token:
        tokens = meta.get("tokens")
        ours = [t for t in tokens.values() if isinstance(t, dict) and t.get("type") == TOKEN_TYPE] \
            if isinstance(tokens, dict) else []
        if not ours:
            raise K4sError(f"data disk {where}: a LUKS2 volume k4s did not seal (no {TOKEN_TYPE} token)",
                           hint="k4s opens only the volumes it formatted with k4s.data-encrypt=tpm")
        t = ours[0]
        try:
            pcrs = tuple(int(p) for p in t["tpm2-pcrs"])
            if not pcrs or any(not 0 <= p <= 23 for p in pcrs):
                raise ValueError("PCRs 0-23")
            sealed = tpm.Sealed(base64.b64decode(t["tpm2-public"], validate=True),
                                base64.b64decode(t["tpm2-private"], validate=True), pcrs,
                                bytes.fromhex(t["tpm2-policy-hash"]))
            values = {int(p): str(v) for p, v in t.get("tpm2-pcr-values", {}).items()}
        except (KeyError, TypeError, ValueError):
            raise K4sError(f"data disk {where}: its {TOKEN_TYPE} token is malformed",
                           hint="the header is damaged; restore it from a backup (cryptsetup luksHeaderRestore)") from None
        return cls(sealed, values)


def cryptsetup(*args: str, key: bytes = b"", what: str) -> None:
    """cryptsetup with the key (if any) on its stdin, never in a file or an argument."""
    process.run_tool([CRYPTSETUP, "--batch-mode", *args], what, TIMEOUT, stdin=key,
                     fail_hint="the kernel needs dm-crypt (dm_mod, dm_crypt) and AES-XTS")


def measured(values: dict[int, str]) -> None:
    """Sealing to a PCR 15 that stage 1 never extended would bind the disk to nothing."""
    if values.get(tpm.MEASURED_PCR, "").strip("0") == "":
        raise K4sError("data disk: k4s.data-encrypt=tpm seals the key to what stage 1 measured, and PCR 15 is "
                       "empty: this boot did not come through stage 1",
                       hint="boot through stage 1 (LinuxBoot, PXE or the signed UKI) on a machine with a TPM, "
                            "or drop k4s.data-encrypt")


def format_sealed(dev: Path, label: str, t: tpm.Tpm) -> bytes:
    """A blank `dev` as a LUKS2 volume whose key only this TPM, under these PCR values, unseals;
    the key (for opening it now). On a failure the header is zeroed again: the disk stays
    blank, not half-made."""
    values = {p: v.hex() for p, v in t.pcr_values(tpm.SEALED_PCRS)}
    measured(values)
    key = os.urandom(KEY_BYTES)
    token = Token(t.seal(key), values)
    try:
        cryptsetup("luksFormat", "--type", "luks2", "--label", label, "--pbkdf", "pbkdf2",
                   "--pbkdf-force-iterations", "1000", "--key-file", "-", str(dev), key=key, what=f"formatting {dev}")
        cryptsetup("token", "import", "--json-file", "-", str(dev), key=json.dumps(token.as_json()).encode(),
                   what=f"writing the sealed key to {dev}")
    except BaseException:
        zero_header(dev)
        raise
    return key


def discard(dev: Path) -> None:
    """Close a volume just formatted and zero its header: the disk is blank again."""
    subprocess.run([CRYPTSETUP, "close", MAPPED], capture_output=True, timeout=TIMEOUT)
    zero_header(dev)


def zero_header(dev: Path) -> None:
    try:
        with open(dev, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(0)
            left = min(size, KEYSLOTS_END)
            while left > 0:
                left -= f.write(bytes(min(left, 1 << 20)))
            os.fsync(f.fileno())
    except OSError:
        pass


def open_volume(dev: Path, key: bytes) -> Path:
    cryptsetup("open", "--type", "luks2", "--key-file", "-", str(dev), MAPPED, key=key, what=f"opening {dev}")
    return Path("/dev/mapper") / MAPPED


def unseal(dev: Path, t: tpm.Tpm) -> bytes:
    """The volume's key from this TPM, or one line saying why it stays locked."""
    token = Token.find(metadata(dev), str(dev))
    try:
        return t.unseal(token.sealed)
    except tpm.TpmError as e:
        raise locked(dev, e, token, {p: v.hex() for p, v in t.pcr_values(token.sealed.pcrs)}) from None


def locked(dev: Path, e: tpm.TpmError, token: Token, now: dict[int, str]) -> K4sError:
    pcrs = "+".join(map(str, token.sealed.pcrs))
    if e.integrity_failed:
        return K4sError(f"data disk {dev} stays locked: its key was sealed by another machine's TPM "
                        f"(or this TPM was cleared since)",
                        hint="boot it in the machine that formatted it; a disk moved to another machine never opens")
    if e.policy_failed:
        moved = [p for p in token.sealed.pcrs if token.values.get(p) != now.get(p)]
        which = ", ".join(f"PCR {p} ({WHAT.get(p, 'firmware')}) holds {now.get(p, '?')[:16]}..., sealed at "
                          f"{token.values.get(p, '?')[:16]}..." for p in moved) or f"PCRs {pcrs} moved"
        return K4sError(f"data disk {dev} stays locked: its key was sealed under another payload or Secure Boot "
                        f"state: {which}",
                        hint="boot the payload it was sealed under (k4s verify --pcr names a payload's PCR 15); "
                             "to start afresh, wipe the disk (its data is lost)")
    return K4sError(f"data disk {dev} stays locked: the TPM refused to unseal its key ({e.message})",
                    hint="check the TPM (k4s status shows PCR 15)")


def unlock(dev: Path, device: Path = tpm.DEVICE) -> Path:
    """Open a sealed volume: /dev/mapper/k4sdata."""
    if not tpm.present(device):
        raise K4sError(f"data disk {dev} stays locked: its key is sealed to a TPM, and this machine has none "
                       f"({device})", hint="boot it in the machine that formatted it, with its TPM enabled")
    with tpm.Tpm(device) as t:
        key = unseal(dev, t)
    log.event(*events.DATA_UNSEALED, device=str(dev), pcrs=SEALED_TO)
    return open_volume(dev, key)


def format_and_open(dev: Path, label: str) -> Path:
    with tpm.Tpm() as t:
        key = format_sealed(dev, label, t)
    log.event(*events.DATA_SEALED, device=str(dev), pcrs=SEALED_TO)
    try:
        return open_volume(dev, key)
    except K4sError:
        zero_header(dev)
        raise
