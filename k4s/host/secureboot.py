"""UEFI Secure Boot on the build host: the owner's keys, signing PE images, a firmware
variable store with the keys enrolled, and an ESP to boot from.

    out/keys/PK.{key,crt}    platform key: owns the machine's Secure Boot setup
    out/keys/KEK.{key,crt}   key-exchange key: may change db and dbx
    out/keys/db.{key,crt}    signature database: signs what the firmware may run (the UKI,
                             and stage 2's kernel, which a locked-down stage 1 kexecs)
    out/keys/secureboot.guid the owner GUID the certificates are enrolled under

RSA-2048 and SHA-256, what every UEFI firmware verifies. The keys are `cryptography`'s;
signing is sbsigntool's (Authenticode), enrolment virt-firmware's: nothing here is
hand-written cryptography. The certificates are public; the keys stay in out/keys (0600).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.mkimage import host

KEYS = ("PK", "KEK", "db")
GUID_FILE = "secureboot.guid"
OVMF = Path("/usr/share/OVMF")
OVMF_CODE = OVMF / "OVMF_CODE_4M.fd"                # UEFI without Secure Boot
OVMF_CODE_SECURE = OVMF / "OVMF_CODE_4M.secboot.fd"  # with it: needs SMM, so the store cannot be written around it
OVMF_VARS = OVMF / "OVMF_VARS_4M.fd"                 # a blank variable store: setup mode, no keys
ESP_BOOT_PATH = "::/EFI/BOOT/BOOTX64.EFI"            # the removable-media path firmware boots by default
TOOLS = {"objcopy": "binutils", "sbsign": "sbsigntool", "sbverify": "sbsigntool", "sbattach": "sbsigntool",
         "virt-fw-vars": "virt-firmware (pip)", "mkfs.vfat": "dosfstools", "mcopy": "mtools", "mmd": "mtools"}


def tool(name: str) -> str:
    path = shutil.which(name)
    if not path:
        raise K4sError(f"{name} not found", hint=f"run `make setup` (it installs {TOOLS.get(name, name)})")
    return path


def run(argv: list[str], env: dict[str, str] | None = None) -> str:
    """mkimage's way to run a build host program (one line when it fails), after checking that
    it is installed (a hint naming the package when not)."""
    tool(argv[0])
    return host.run(argv, env)


@contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A temporary path beside `out`, renamed onto it when the block succeeds: never half-written."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.")
    except OSError as e:
        raise K4sError(f"cannot write {out}: {e.strerror}", hint="choose a writable directory") from e
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)
        tmp.replace(out)
    finally:
        tmp.unlink(missing_ok=True)


# --- keys ------------------------------------------------------------------------------


def paths(keys: Path, kind: str) -> tuple[Path, Path]:
    return keys / f"{kind}.key", keys / f"{kind}.crt"


def keygen(keys: Path) -> list[Path]:
    """PK, KEK and db (RSA-2048, self-signed, ten years) and the owner GUID, each made only
    if missing: an existing key is never replaced (machines enrolled with it would stop
    booting). The files written."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    try:
        keys.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise K4sError(f"cannot make {keys}: {e.strerror}", hint="choose a writable directory") from e
    written = []
    guid_file = keys / GUID_FILE
    if not guid_file.exists():
        write_atomic(guid_file, f"{uuid.uuid4()}\n")
        written.append(guid_file)
    owner = owner_guid(keys)
    now = datetime.now(UTC).replace(microsecond=0)
    for kind in KEYS:
        key_path, crt_path = paths(keys, kind)
        if key_path.exists() or crt_path.exists():
            continue
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"k4s Secure Boot {kind} {owner[:8]}")])
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
                .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                .add_extension(ski, critical=False)
                .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False)
                .sign(key, hashes.SHA256()))
        write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()), 0o600)
        write_atomic(crt_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        written += [key_path, crt_path]
    return written


def owner_guid(keys: Path) -> str:
    try:
        return str(uuid.UUID((keys / GUID_FILE).read_text().strip()))
    except (OSError, ValueError) as e:
        raise K4sError(f"no Secure Boot owner GUID in {keys / GUID_FILE}: {e}",
                       hint="make the Secure Boot keys with `k4s keygen`") from None


def require(keys: Path, kind: str, private: bool) -> tuple[Path, Path]:
    key, crt = paths(keys, kind)
    for p in (key, crt) if private else (crt,):
        if not p.is_file():
            raise K4sError(f"{p} not found", hint="make the Secure Boot keys with `k4s keygen --dir "
                                                  f"{keys}` (existing keys are kept)")
    return key, crt


# --- signing -----------------------------------------------------------------------------


def is_signed(path: Path) -> bool:
    r = subprocess.run([tool("sbverify"), "--list", str(path)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    if "Can't open" in r.stderr or "Invalid" in r.stderr or "unable to" in r.stderr.lower():
        raise K4sError(f"{path} is not a PE/COFF image: {r.stderr.strip().splitlines()[-1]}",
                       hint="pass an EFI application or a bzImage kernel")
    return "signature 1" in r.stdout


def sign(src: Path, out: Path, keys: Path) -> Path:
    """`src` signed with the db key into `out` (Authenticode). Any signature it had is
    replaced: a Debian kernel's, for one, which the owner's firmware does not trust."""
    key, crt = require(keys, "db", private=True)
    if not src.is_file():
        raise K4sError(f"{src} not found", hint="check the path")
    with staged(out) as tmp, tempfile.TemporaryDirectory(prefix="k4s-sign-") as work:
        unsigned = src
        if is_signed(src):
            unsigned = Path(work) / "unsigned"
            run(["sbattach", "--remove", str(shutil.copy(src, unsigned))])
        run(["sbsign", "--key", str(key), "--cert", str(crt), "--output", str(tmp), str(unsigned)])
    return out


def verifies(path: Path, cert: Path) -> bool:
    """Whether `path` carries a valid signature by `cert` (sbverify, as the firmware checks it)."""
    r = subprocess.run([tool("sbverify"), "--cert", str(cert), str(path)], capture_output=True, text=True,
                       stdin=subprocess.DEVNULL, timeout=60)
    return r.returncode == 0


# --- the firmware's variable store, and the disk it boots ------------------------------------


def enroll(out: Path, keys: Path, template: Path = OVMF_VARS) -> Path:
    """A copy of OVMF's blank variable store with PK, KEK and db enrolled under the owner's GUID
    and Secure Boot switched on (user mode): only what db signed runs. Public: certificates only."""
    if not template.is_file():
        raise K4sError(f"{template} not found", hint="run `make setup` (it installs ovmf)")
    guid = owner_guid(keys)
    certs = {kind: require(keys, kind, private=False)[1] for kind in KEYS}
    with staged(out) as tmp:
        run(["virt-fw-vars", "--input", str(template), "--output", str(tmp),
             "--set-pk", guid, str(certs["PK"]), "--add-kek", guid, str(certs["KEK"]),
             "--add-db", guid, str(certs["db"]), "--secure-boot"])
    return out


def esp(image: Path, out: Path) -> Path:
    """A FAT EFI system partition holding `image` at the removable-media boot path, as a raw
    disk image (whole-disk FAT: OVMF boots it like a USB stick)."""
    if not image.is_file():
        raise K4sError(f"{image} not found", hint="build the UKI with `make stage1`")
    kib = max(32 << 10, (image.stat().st_size >> 10) + (8 << 10))
    env = {"MTOOLS_SKIP_CHECK": "1", "SOURCE_DATE_EPOCH": "0"}
    with staged(out) as tmp:
        tmp.unlink()
        run(["mkfs.vfat", "-C", "-n", "K4S-ESP", "-i", "4b345345", "--invariant", str(tmp), str(kib)])
        run(["mmd", "-i", str(tmp), "::/EFI", "::/EFI/BOOT"], env)
        run(["mcopy", "-i", str(tmp), str(image), ESP_BOOT_PATH], env)
    return out
