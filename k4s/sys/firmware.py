"""What the firmware and the kernel say about boot trust: UEFI or not, Secure Boot, and the
kernel's lockdown (which Secure Boot turns on: a locked-down kernel loads only signed modules
and kexecs only a kernel its keyrings trust). Read from securityfs, which
init.mount_all mounts, and efivarfs, which init.firmware_trust mounts read-only once its
module is loaded (nothing on a node writes firmware variables).
Standard library only: PID 1 and stage 1 import this."""

from __future__ import annotations

from pathlib import Path

from k4s.sys import tpm

EFI = Path("/sys/firmware/efi")
EFIVARS = EFI / "efivars"
SECURITYFS = Path("/sys/kernel/security")
SECURE_BOOT_VAR = "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"  # EFI_GLOBAL_VARIABLE


def secure_boot(efivars: Path = EFIVARS) -> bool:
    """The firmware's SecureBoot variable: 4 bytes of attributes, then 1 when it is on."""
    try:
        raw = (efivars / SECURE_BOOT_VAR).read_bytes()
    except OSError:
        return False
    return len(raw) == 5 and raw[4] == 1


def lockdown(securityfs: Path = SECURITYFS) -> str:
    """The kernel's lockdown mode, the bracketed word of "none [integrity] confidentiality";
    "unknown" without securityfs or the lockdown LSM."""
    try:
        text = (securityfs / "lockdown").read_text()
    except OSError:
        return "unknown"
    return next((w.strip("[]") for w in text.split() if w.startswith("[")), "unknown")


def trust(efi: Path = EFI, securityfs: Path = SECURITYFS, tpm_sysfs: Path = tpm.SYSFS) -> dict[str, str]:
    """The fields of the boot's firmware event: firmware=uefi|bios, secure_boot=on|off,
    lockdown=MODE, and with a TPM the PCR stage 1 measured the payload into (pcr15=hex)."""
    uefi = efi.is_dir()
    out = {"firmware": "uefi" if uefi else "bios",
           "secure_boot": "on" if uefi and secure_boot(efi / "efivars") else "off",
           "lockdown": lockdown(securityfs)}
    if value := tpm.read(tpm.MEASURED_PCR, tpm_sysfs):
        out[f"pcr{tpm.MEASURED_PCR}"] = value
    return out
