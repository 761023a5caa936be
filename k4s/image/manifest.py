"""Signed boot manifests: every artifact of a payload with its size and sha256, and
the kernel command line, signed with Ed25519.

    manifest.json   {"k4s-manifest": 1, "serial": N, "expires": UNIX, "node-role": "server"|"agent",
                     "cmdline": "...", "artifacts": [{name, role, size, sha256}]}
    manifest.sig    the Ed25519 signature of manifest.json's exact bytes, base64

Nothing old replays: the serial grows with every signing (seconds since the epoch unless
given), stage 1 refuses one below the minimum it was built with (`mkimage --stage1
--min-serial`: raise it to revoke every older payload), and refuses a manifest past its
expiry (30 days by default). The manifest names the node role its command line boots, so a
payload signed for workers cannot be handed to a machine whose stage 1 says it is a server.

Roles: kernel, initrd (in boot order), config, part (a squashfs part inside the
initramfs: stage 1 hands their hashes to stage 2, whose stage 0 checks each
part before it mounts it). The signing key stays on the build host (0600); the public key is
built into the first stage, which checks the signature and then every artifact
while it streams in. Ed25519 comes from PyNaCl (libsodium): small enough for a
first stage that must fit a flash part beside its kernel, where `cryptography`
would not.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import BinaryIO

from k4s import layout
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

MANIFEST = "manifest.json"
SIGNATURE = "manifest.sig"
PUBLIC_KEY = layout.STAGE1_PUBLIC_KEY.name
PAYLOAD_CA = layout.STAGE1_PAYLOAD_CA.name  # stage 1: the CA bundle an https:// payload server is checked against
PARTS_SHA256 = layout.PARTS_CHECK.name  # what stage 1 hands stage 2: `sha256sum -c` lines for its parts
SECRET_KEY = "signing.key"
UEFI_IMAGE = "stage1.efi"  # beside a payload, for UEFI NICs: the firmware verifies it (db), not this manifest
ROLES = ("kernel", "initrd", "config", "part")
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")  # a file name in the payload directory, nothing else
MIN_SERIAL = layout.STAGE1_MIN_SERIAL.name  # built into stage 1: the lowest serial it boots
RESERVED = frozenset({MANIFEST, SIGNATURE, PUBLIC_KEY, PAYLOAD_CA, PARTS_SHA256, SECRET_KEY, MIN_SERIAL,
                      "boot.ipxe", "initrd.img", "handoff.cpio", "join.cpio", UEFI_IMAGE})  # names the boot paths use
NODE_ROLES = ("server", "agent")
DEFAULT_VALIDITY = 30 * 86400
MAX_MANIFEST = 1 << 20
CHUNK = 1 << 20


class VerifyError(K4sError):
    """A payload that must not run: one line naming the artifact and the reason."""

    def __init__(self, message: str) -> None:
        super().__init__(message, hint="the payload was altered, truncated or signed by another key; "
                                       "nothing from it ran")


@dataclass(frozen=True)
class Artifact:
    name: str
    role: str
    size: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    cmdline: str
    artifacts: tuple[Artifact, ...]
    serial: int = 0
    expires: int = 0  # seconds since the epoch
    node_role: str = "server"
    # of the exact bytes whose signature verified (parse): what stage 1 measures first
    signed_sha256: str = field(default="", compare=False)

    def by_role(self, role: str) -> list[Artifact]:
        return [a for a in self.artifacts if a.role == role]

    def get(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise VerifyError(f"{name}: not in the signed manifest")

    def to_bytes(self) -> bytes:
        doc = {"k4s-manifest": 1, "serial": self.serial, "expires": self.expires, "node-role": self.node_role,
               "cmdline": self.cmdline, "artifacts": [asdict(a) for a in self.artifacts]}
        return json.dumps(doc, indent=1, sort_keys=True).encode() + b"\n"

    def check_fresh(self, min_serial: int, now: float, role: str | None = None) -> None:
        """Refuse a replayed manifest: a serial below min_serial, an expiry past now, or a node
        role other than `role` (when the machine names one)."""
        if self.serial < min_serial:
            raise VerifyError(f"{MANIFEST}: serial {self.serial} is below this stage 1's minimum {min_serial} "
                              "(an older payload, replayed)")
        if now >= self.expires:
            raise VerifyError(f"{MANIFEST}: expired at {_utc(self.expires)} (now {_utc(now)})")
        if role is not None and role != self.node_role:
            raise VerifyError(f"{MANIFEST}: signed for a {self.node_role}, and this machine is a {role}")


def _utc(t: float) -> str:
    import time

    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def role_of(cmdline: str) -> str:
    """The node role a command line boots (k4s.role=, server when absent)."""
    from k4s.config import CMDLINE_PREFIX, kernel_params

    roles = [v for p, v in kernel_params(cmdline) if p == f"{CMDLINE_PREFIX}role"]
    return roles[-1] if roles and roles[-1] in NODE_ROLES else "server"


def check_names(names: list[str]) -> None:
    """Every artifact name a plain file name, none reserved, none twice."""
    seen: set[str] = set()
    for n in names:
        if not NAME.fullmatch(n):
            raise K4sError(f"artifact name {n[:80]!r} is not a plain file name", hint="letters, digits, . _ - only")
        if n in RESERVED:
            raise K4sError(f"artifact name {n!r} is reserved", hint="rename the file")
        if n in seen:
            raise K4sError(f"two artifacts are named {n!r}", hint="rename one of them")
        seen.add(n)


# --- keys -----------------------------------------------------------------------------------

def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def keygen(directory: Path) -> tuple[Path, Path]:
    """A new Ed25519 key pair: signing.key (0600, in a 0700 directory) and signing.pub."""
    from nacl.signing import SigningKey

    key, pub = directory / SECRET_KEY, directory / PUBLIC_KEY
    if key.exists():
        raise K4sError(f"{key} exists; refusing to replace a signing key",
                       hint="remove it first if you mean to: payloads signed with it will no longer verify")
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise K4sError(f"cannot make {directory}: {e.strerror}", hint="choose a writable directory") from e
    sk = SigningKey.generate()
    write_atomic(key, f"k4s-ed25519-secret {_b64(bytes(sk))}\n", 0o600)
    write_atomic(pub, f"k4s-ed25519 {_b64(bytes(sk.verify_key))}\n", 0o644)
    return key, pub


def _read_key(path: Path, kind: str) -> bytes:
    try:
        text = path.read_text()
    except OSError as e:
        raise K4sError(f"cannot read {path}: {e.strerror}", hint="make a key pair with `k4s keygen`") from e
    parts = text.split()
    try:
        if len(parts) == 2 and parts[0] == kind:
            raw = base64.b64decode(parts[1], validate=True)
            if len(raw) == 32:
                return raw
    except ValueError:
        pass
    raise K4sError(f"{path} is not a k4s {'signing' if 'secret' in kind else 'public'} key",
                   hint="make a key pair with `k4s keygen`")


def public_key(path: Path) -> bytes:
    return _read_key(path, "k4s-ed25519")


# --- signing and verifying -------------------------------------------------------------------

def digest(path: Path) -> tuple[int, str]:
    h, n = hashlib.sha256(), 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
                n += len(chunk)
    except OSError as e:
        raise K4sError(f"cannot read {path}: {e.strerror}", hint="check the artifact exists") from e
    return n, h.hexdigest()


def sign(directory: Path, key_path: Path, artifacts: Iterable[tuple[str, str]], cmdline: str,
         hashed: Iterable[Artifact] = (), serial: int | None = None, valid: int = DEFAULT_VALIDITY) -> Manifest:
    """Hash each (name, role) in directory, add the `hashed` ones (the squashfs parts inside
    the initramfs, hashed by mkimage), write manifest.json and manifest.sig there. serial:
    seconds since the epoch unless given; valid: seconds until it expires."""
    import time

    from nacl.signing import SigningKey

    sk = SigningKey(_read_key(key_path, "k4s-ed25519-secret"))
    artifacts, hashed = list(artifacts), list(hashed)
    check_names([n for n, _ in artifacts] + [a.name for a in hashed])
    items = []
    for name, role in artifacts:
        if role not in ROLES:
            raise K4sError(f"cannot sign {name!r} as {role!r}", hint=f"one of the roles {ROLES}")
        size, sha = digest(directory / name)
        items.append(Artifact(name, role, size, sha))
    items += hashed
    now = int(time.time())
    m = Manifest(cmdline, tuple(items), now if serial is None else serial, now + valid, role_of(cmdline))
    raw = m.to_bytes()
    write_atomic(directory / MANIFEST, raw)
    write_atomic(directory / SIGNATURE, _b64(sk.sign(raw).signature) + "\n")
    return m


def parse(raw: bytes, sig: bytes, pub: bytes) -> Manifest:
    """The manifest, only if the signature over its exact bytes verifies with pub."""
    from nacl.exceptions import BadSignatureError
    from nacl.signing import VerifyKey

    if len(raw) > MAX_MANIFEST:
        raise VerifyError(f"{MANIFEST}: {len(raw)} bytes, too big for a manifest")
    try:
        signature = base64.b64decode(sig.strip(), validate=True)
    except ValueError:
        raise VerifyError(f"{SIGNATURE}: not base64") from None
    if len(signature) != 64:
        raise VerifyError(f"{SIGNATURE}: missing or not an Ed25519 signature")
    try:
        VerifyKey(pub).verify(raw, signature)
    except BadSignatureError:
        raise VerifyError(f"{MANIFEST}: the signature does not verify with the built-in public key") from None
    try:  # signed, so ours; still checked, since a key can sign a mistake
        doc = json.loads(raw)
        items = tuple(Artifact(str(a["name"]), str(a["role"]), int(a["size"]), str(a["sha256"]))
                      for a in doc["artifacts"])
        m = Manifest(str(doc["cmdline"]), items, int(doc["serial"]), int(doc["expires"]), str(doc["node-role"]),
                     hashlib.sha256(raw).hexdigest())
    except (ValueError, KeyError, TypeError):
        raise VerifyError(f"{MANIFEST}: signed but malformed (a manifest from before serials? sign it again)") from None
    if m.node_role not in NODE_ROLES:
        raise VerifyError(f"{MANIFEST}: signed for an unknown node role {m.node_role[:20]!r}")
    for a in m.artifacts:
        if a.role not in ROLES or not re.fullmatch(r"[0-9a-f]{64}", a.sha256):
            raise VerifyError(f"{MANIFEST}: signed but names a bad artifact {a.name[:80]!r}")
    try:
        check_names([a.name for a in m.artifacts])
    except K4sError as e:
        raise VerifyError(f"{MANIFEST}: signed but {e.message}") from None
    return m


def measurements(m: Manifest) -> list[tuple[str, str]]:
    """What stage 1 extends tpm.MEASURED_PCR with, in this order: the signed manifest's exact bytes
    (as parse verified them), then each kernel and initrd it boots (name, sha256 hex). Their
    hashes are signed, so the PCR's value is predictable from the payload alone (`k4s verify --pcr`)."""
    if not m.signed_sha256:
        raise ValueError("a manifest that parse did not verify has nothing to measure")
    return [(MANIFEST, m.signed_sha256),
            *((a.name, a.sha256) for a in [*m.by_role("kernel"), *m.by_role("initrd")])]


def predict_pcr(measured: list[tuple[str, str]], start: bytes = bytes(32)) -> str:
    """The SHA-256 PCR after extending `start` (a PCR's reset value: zeros) with each digest."""
    from k4s.sys import tpm

    return tpm.replay((digest for _, digest in measured), start)


def parts_check(m: Manifest, parts_dir: str) -> bytes:
    """The signed parts as `sha256sum -c` lines (the format busybox reads in stage 0)."""
    return "".join(f"{a.sha256}  {parts_dir.strip('/')}/{a.name}\n" for a in m.by_role("part")).encode()


def check_stream(art: Artifact, chunks: Iterator[bytes], out: BinaryIO | None = None) -> int:
    """Hash an artifact as it streams in (writing it to out); refuse it on the first byte too
    many, or at the end when its size or sha256 differ. Bytes read."""
    h, n = hashlib.sha256(), 0
    for chunk in chunks:
        n += len(chunk)
        if n > art.size:
            raise VerifyError(f"{art.name}: longer than the {art.size} bytes the manifest says")
        h.update(chunk)
        if out is not None:
            out.write(chunk)
    if n != art.size:
        raise VerifyError(f"{art.name}: truncated ({n} of {art.size} bytes)")
    if h.hexdigest() != art.sha256:
        raise VerifyError(f"{art.name}: sha256 differs from the signed manifest")
    return n


def file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            yield chunk


def verify_dir(directory: Path, pub: bytes) -> Manifest:
    """An operator's check of a payload directory: the signature, every artifact, and no
    file beside them that the manifest does not name."""
    try:
        raw = (directory / MANIFEST).read_bytes()
    except OSError:
        raise VerifyError(f"{MANIFEST}: missing in {directory}") from None
    try:
        sig = (directory / SIGNATURE).read_bytes()
    except OSError:
        raise VerifyError(f"{SIGNATURE}: missing in {directory}") from None
    m = parse(raw, sig, pub)
    for a in m.artifacts:
        if a.role == "part":
            continue  # inside the initramfs: stage 0 checks it before it mounts it
        try:
            check_stream(a, file_chunks(directory / a.name))
        except FileNotFoundError:
            raise VerifyError(f"{a.name}: missing") from None
    known = {a.name for a in m.artifacts if a.role != "part"} | {MANIFEST, SIGNATURE, "boot.ipxe", PUBLIC_KEY,
                                                                  UEFI_IMAGE}
    extra = sorted(p.name for p in directory.iterdir() if p.is_file() and p.name not in known)
    if extra:
        raise VerifyError(f"{extra[0]}: not in the signed manifest")
    return m
