"""A TPM 2.0 through the kernel: extend a PCR, read one, and seal a secret to PCR values.

Stage 1 extends MEASURED_PCR with the payload it verified before it kexecs stage 2; stage 2
seals its data disk's key to SEALED_PCRS and unseals it at the next boot. The commands are
the TPM 2.0 library spec's (part 3), marshalled here byte for byte: nothing here is
cryptography, the TPM does all of it (the hashing, the keys, the sealing). Standard library
only: stage 1 imports this.

Sealing: a storage key is derived, not stored (TPM2_CreatePrimary under the owner hierarchy
with the TCG's ECC P-256 SRK template: the same key on the same TPM at every boot, another on
any other TPM), and the secret becomes a sealed data object under it whose only
authorization is a PCR policy (TPM2_PolicyPCR: the SHA-256 values of the chosen PCRs at
sealing time). The TPM hands back the object's public and private halves, the private one
encrypted to that storage key: both are kept beside what they protect, and are useless
without this TPM and those PCR values.

Not done: the sessions are unsalted, so the unsealed secret crosses the bus to a discrete
TPM in the clear (a firmware TPM has no bus to probe).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from k4s.errors import K4sError

DEVICE = Path("/dev/tpmrm0")  # the kernel's resource manager: no other user's sessions in the way
SYSFS = Path("/sys/class/tpm/tpm0")
MEASURED_PCR = 15  # stage 1 extends it with the payload it verified (0-14: firmware, loaders, stub, shim)
SECURE_BOOT_PCR = 7  # the firmware's: Secure Boot on or off, and the PK, KEK, db and dbx it enforces
SEALED_PCRS = (SECURE_BOOT_PCR, MEASURED_PCR)  # what a sealed secret is bound to: this Secure Boot, this payload

TPM_ST_NO_SESSIONS, TPM_ST_SESSIONS = 0x8001, 0x8002
TPM_CC_CREATE_PRIMARY, TPM_CC_CREATE, TPM_CC_LOAD, TPM_CC_UNSEAL = 0x131, 0x153, 0x157, 0x15E
TPM_CC_FLUSH_CONTEXT, TPM_CC_START_AUTH_SESSION, TPM_CC_PCR_READ, TPM_CC_POLICY_PCR = 0x165, 0x176, 0x17E, 0x17F
TPM_CC_PCR_EXTEND = 0x182
TPM_RS_PW, TPM_RH_OWNER, TPM_RH_NULL = 0x40000009, 0x40000001, 0x40000007
TPM_ALG_SHA256, TPM_ALG_NULL, TPM_ALG_ECC, TPM_ALG_KEYEDHASH = 0x000B, 0x0010, 0x0023, 0x0008
TPM_ALG_AES, TPM_ALG_CFB, TPM_ECC_NIST_P256, TPM_SE_POLICY = 0x0006, 0x0043, 0x0003, 0x01
# object attributes (part 2, 8.3)
FIXED_TPM, FIXED_PARENT, SENSITIVE_DATA_ORIGIN, USER_WITH_AUTH = 1 << 1, 1 << 4, 1 << 5, 1 << 6
NO_DA, RESTRICTED, DECRYPT = 1 << 10, 1 << 16, 1 << 17
MAX_SEALED = 128  # MAX_SYM_DATA: the most a sealed data object holds
MAX_RESPONSE = 4096

# format-one response codes (part 2, 6.6.3): the error, without which handle, session or parameter
RC_FMT1, RC_POLICY_FAIL, RC_INTEGRITY = 0x080, 0x01D, 0x01F


class TpmError(K4sError):
    """The TPM answered a command with a response code other than success."""

    def __init__(self, command: str, rc: int, hint: str = "") -> None:
        super().__init__(f"TPM2_{command} failed: response code {rc:#x}", hint=hint)
        self.rc = rc

    @property
    def error(self) -> int:
        """The error without its handle, session or parameter number (format one), else the code."""
        return self.rc & 0x3F if self.rc & RC_FMT1 else self.rc

    @property
    def policy_failed(self) -> bool:
        return bool(self.rc & RC_FMT1) and self.error == RC_POLICY_FAIL

    @property
    def integrity_failed(self) -> bool:
        """A sealed object another TPM made (or this one before its owner was cleared)."""
        return bool(self.rc & RC_FMT1) and self.error == RC_INTEGRITY


def tpm2b(data: bytes) -> bytes:
    return struct.pack(">H", len(data)) + data


def pcr_selection(pcrs: Iterable[int]) -> bytes:
    """TPML_PCR_SELECTION: one SHA-256 bank, these PCRs (0-23)."""
    bits = 0
    for p in pcrs:
        if not 0 <= p <= 23:
            raise ValueError(f"PCR {p} is not 0-23")
        bits |= 1 << p
    return struct.pack(">IHB", 1, TPM_ALG_SHA256, 3) + bits.to_bytes(3, "little")


def password_auth() -> bytes:
    """An authorization area with the empty password session (what PCRs 0-15 and a storage key
    without a password accept)."""
    auth = struct.pack(">IHBH", TPM_RS_PW, 0, 0, 0)  # session handle, empty nonce, attributes, empty password
    return struct.pack(">I", len(auth)) + auth


def command(cc: int, handles: Sequence[int] = (), params: bytes = b"", auth: bytes | None = None) -> bytes:
    """A whole command: header, handles, the authorization area if any, parameters."""
    body = b"".join(struct.pack(">I", h) for h in handles) + (auth or b"") + params
    tag = TPM_ST_SESSIONS if auth is not None else TPM_ST_NO_SESSIONS
    return struct.pack(">HII", tag, 10 + len(body), cc) + body


def extend_command(pcr: int, digest: bytes) -> bytes:
    """TPM2_PCR_Extend(pcr, {sha256: digest}) with an empty password authorization."""
    if len(digest) != 32 or not 0 <= pcr <= 23:
        raise ValueError("a PCR 0-23 and a 32-byte SHA-256 digest")
    return command(TPM_CC_PCR_EXTEND, [pcr], struct.pack(">IH", 1, TPM_ALG_SHA256) + digest, password_auth())


def policy_pcr_digest(values: Sequence[tuple[int, bytes]]) -> bytes:
    """The policy digest TPM2_PolicyPCR leaves in a fresh session when the PCRs hold these
    values (part 3, 23.7): what a sealed object's authPolicy must equal for it to unseal."""
    pcrs = sorted(values)
    pcr_digest = hashlib.sha256(b"".join(v for _, v in pcrs)).digest()
    return hashlib.sha256(bytes(32) + struct.pack(">I", TPM_CC_POLICY_PCR) + pcr_selection(p for p, _ in pcrs)
                          + pcr_digest).digest()


def srk_template() -> bytes:
    """TPMT_PUBLIC of the TCG's ECC P-256 storage root key (the provisioning guidance's
    template, as tpm2-tools and systemd derive it): restricted, decrypting, AES-128-CFB."""
    attrs = FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | NO_DA | RESTRICTED | DECRYPT
    return (struct.pack(">HHI", TPM_ALG_ECC, TPM_ALG_SHA256, attrs) + tpm2b(b"")
            + struct.pack(">HHHHHH", TPM_ALG_AES, 128, TPM_ALG_CFB, TPM_ALG_NULL, TPM_ECC_NIST_P256, TPM_ALG_NULL)
            + tpm2b(b"") + tpm2b(b""))


def sealed_template(policy: bytes) -> bytes:
    """TPMT_PUBLIC of a sealed data object: no password (no userWithAuth), only `policy`."""
    return (struct.pack(">HHI", TPM_ALG_KEYEDHASH, TPM_ALG_SHA256, FIXED_TPM | FIXED_PARENT) + tpm2b(policy)
            + struct.pack(">H", TPM_ALG_NULL) + tpm2b(b""))


class Reader:
    """Unmarshals a response body; a short or malformed one is a TpmError-free K4sError."""

    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, n: int) -> bytes:
        if self.at + n > len(self.data):
            raise K4sError("a truncated answer from the TPM", hint="a TPM 2.0?")
        out = self.data[self.at:self.at + n]
        self.at += n
        return out

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def tpm2b(self) -> bytes:
        return self.take(struct.unpack(">H", self.take(2))[0])


@dataclass(frozen=True)
class Sealed:
    """What the TPM hands back for a sealed secret: keep both halves beside what it protects."""
    public: bytes   # TPM2B_PUBLIC, as returned
    private: bytes  # TPM2B_PRIVATE, as returned: encrypted to this TPM's storage key
    pcrs: tuple[int, ...]
    policy: bytes   # the PolicyPCR digest it was sealed to


class Tpm:
    """One connection to a TPM: /dev/tpmrm0 (whose resource manager flushes what this
    connection made when it closes), or swtpm's socket in tests."""

    def __init__(self, device: Path = DEVICE, sock: socket.socket | None = None) -> None:
        self.device, self.sock, self.fd = device, sock, -1
        if sock is None:
            try:
                self.fd = os.open(device, os.O_RDWR)
            except OSError as e:
                raise K4sError(f"cannot open the TPM: {device}: {e.strerror}",
                               hint="the kernel found no TPM 2.0 (tpm_tis, tpm_crb); QEMU: k4s vm --tpm") from None

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        if self.sock is not None:
            self.sock.close()

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def raw(self, cmd: bytes) -> bytes:
        try:
            if self.sock is not None:
                self.sock.sendall(cmd)
                response = self.sock.recv(10)
                size = struct.unpack(">I", response[2:6])[0] if len(response) == 10 else 0
                while len(response) < min(size, MAX_RESPONSE):
                    if not (more := self.sock.recv(size - len(response))):
                        break
                    response += more
            else:
                os.write(self.fd, cmd)
                response = os.read(self.fd, MAX_RESPONSE)
        except OSError as e:
            raise K4sError(f"the TPM ({self.device}): {e.strerror or e}", hint="the TPM went away or is busy") from None
        return response

    def call(self, name: str, cmd: bytes, hint: str = "") -> Reader:
        """Send a command; its response after the header (raises TpmError on a failure)."""
        response = self.raw(cmd)
        if len(response) < 10:
            raise K4sError(f"TPM2_{name}: a {len(response)}-byte answer from {self.device}", hint="a TPM 2.0?")
        _, _, rc = struct.unpack(">HII", response[:10])
        if rc != 0:
            raise TpmError(name, rc, hint)
        return Reader(response[10:])

    def extend(self, pcr: int, digest: bytes) -> None:
        self.call("PCR_Extend", extend_command(pcr, digest), hint="is the SHA-256 bank allocated?")

    def pcr_values(self, pcrs: Iterable[int]) -> list[tuple[int, bytes]]:
        """TPM2_PCR_Read of the SHA-256 bank, one PCR per command (a TPM answers at most 8 per call)."""
        out = []
        for p in sorted(pcrs):
            r = self.call("PCR_Read", command(TPM_CC_PCR_READ, params=pcr_selection([p])))
            r.u32()  # the update counter
            r.take(4 + 2 + 1 + 3)  # the selection it read
            if r.u32() != 1:
                raise K4sError(f"the TPM has no SHA-256 value for PCR {p}", hint="allocate the SHA-256 PCR bank")
            out.append((p, r.tpm2b()))
        return out

    def primary(self) -> int:
        """The storage key (TPM2_CreatePrimary, owner hierarchy, SRK template): its transient handle."""
        params = tpm2b(tpm2b(b"") + tpm2b(b"")) + tpm2b(srk_template()) + tpm2b(b"") + struct.pack(">I", 0)
        r = self.call("CreatePrimary", command(TPM_CC_CREATE_PRIMARY, [TPM_RH_OWNER], params, password_auth()),
                      hint="the owner hierarchy may have a password (k4s expects none) or be disabled")
        return r.u32()

    def flush(self, handle: int) -> None:
        self.call("FlushContext", command(TPM_CC_FLUSH_CONTEXT, params=struct.pack(">I", handle)))

    def seal(self, secret: bytes, pcrs: Sequence[int] = SEALED_PCRS) -> Sealed:
        """`secret` sealed to the PCRs' current values on this TPM."""
        if not 0 < len(secret) <= MAX_SEALED:
            raise ValueError(f"a sealed secret is 1-{MAX_SEALED} bytes")
        policy = policy_pcr_digest(self.pcr_values(pcrs))
        parent = self.primary()
        try:
            params = (tpm2b(tpm2b(b"") + tpm2b(secret)) + tpm2b(sealed_template(policy)) + tpm2b(b"")
                      + struct.pack(">I", 0))
            r = self.call("Create", command(TPM_CC_CREATE, [parent], params, password_auth()))
            r.u32()  # parameter size
            private, public = r.tpm2b(), r.tpm2b()
        finally:
            self.flush(parent)
        return Sealed(tpm2b(public), tpm2b(private), tuple(sorted(pcrs)), policy)

    def unseal(self, sealed: Sealed) -> bytes:
        """The secret, if this is the TPM that sealed it and its PCRs hold the values they held then;
        TpmError otherwise (policy_failed: other PCR values; integrity_failed: another TPM)."""
        parent = self.primary()
        handles = [parent]
        try:
            r = self.call("Load", command(TPM_CC_LOAD, [parent], sealed.private + sealed.public, password_auth()))
            item = r.u32()
            handles.append(item)
            params = tpm2b(os.urandom(16)) + tpm2b(b"") + struct.pack(">BHH", TPM_SE_POLICY, TPM_ALG_NULL, TPM_ALG_SHA256)
            session = self.call("StartAuthSession", command(TPM_CC_START_AUTH_SESSION, [TPM_RH_NULL, TPM_RH_NULL],
                                                            params)).u32()
            handles.append(session)
            self.call("PolicyPCR", command(TPM_CC_POLICY_PCR, [session], tpm2b(b"") + pcr_selection(sealed.pcrs)))
            auth = struct.pack(">IH", session, 16) + os.urandom(16) + struct.pack(">BH", 0, 0)  # ends the session
            r = self.call("Unseal", command(TPM_CC_UNSEAL, [item], b"", struct.pack(">I", len(auth)) + auth))
            handles.remove(session)
            r.u32()  # parameter size
            return r.tpm2b()
        finally:
            for h in reversed(handles):
                try:
                    self.flush(h)
                except K4sError:
                    pass


# --- the measurement log: what was extended, so a reader can replay it against the PCR -----------

LOG_CONTENT_TYPE = "k4s"
MAX_LOG_RECORDS = 64  # stage 1 writes one per measured artifact: a longer log is not ours


def log_record(recnum: int, pcr: int, digest: str, name: str) -> dict:
    """One event, as systemd's userspace measurement log writes them (the TCG canonical event
    log's JSON form): the PCR, the SHA-256 digest extended into it, and what was measured."""
    return {"recnum": recnum, "pcr": pcr, "digests": [{"hashAlg": "sha256", "digest": digest}],
            "content_type": LOG_CONTENT_TYPE, "content": {"eventType": "payload", "string": name}}


def replay(digests: Iterable[str], start: bytes = bytes(32)) -> str:
    """The SHA-256 PCR after extending `start` (a PCR's reset value: zeros) with each digest."""
    value = start
    for digest in digests:
        value = hashlib.sha256(value + bytes.fromhex(digest)).digest()
    return value.hex()


def read_log(path: Path) -> list[dict]:
    """A measurement log's records (JSON lines), [] when there is none; a malformed one is an
    error line. Bounded: a log is a few records."""
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_LOG_RECORDS * 1024)
    except OSError:
        return []
    records = []
    try:
        for line in raw.decode().splitlines()[:MAX_LOG_RECORDS]:
            r = json.loads(line)
            sha = [d["digest"] for d in r["digests"] if d.get("hashAlg") == "sha256"]
            bytes.fromhex(sha[0])
            records.append({"pcr": int(r["pcr"]), "digest": sha[0], "name": str(r["content"]["string"])})
    except (ValueError, KeyError, IndexError, TypeError):
        raise K4sError(f"{path}: not a measurement log", hint="stage 1 writes it; was the handoff replaced?") from None
    return records


def present(device: Path = DEVICE) -> bool:
    return device.exists()


def extend(pcr: int, digests: Sequence[bytes], device: Path = DEVICE) -> None:
    """Extend pcr with each digest in order, through one open of the TPM."""
    try:
        with Tpm(device) as t:
            for digest in digests:
                t.extend(pcr, digest)
    except TpmError as e:
        raise K4sError(f"cannot extend PCR {pcr}: the TPM answered {e.rc:#x}", hint=e.hint) from None
    except K4sError as e:
        raise K4sError(f"cannot extend PCR {pcr}: {e.message}", hint=e.hint) from None


def read(pcr: int, sysfs: Path = SYSFS) -> str:
    """The PCR's SHA-256 bank as lowercase hex, "" where the kernel does not show it."""
    try:
        return (sysfs / "pcr-sha256" / str(pcr)).read_text().strip().lower()
    except OSError:
        return ""
