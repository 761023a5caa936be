"""What the firmware and the kernel say about boot trust: UEFI or not, Secure Boot, and the
kernel's lockdown (which Secure Boot turns on: a locked-down kernel loads only signed modules
and kexecs only a kernel its keyrings trust). Read from securityfs, which
init.mount_all mounts, and efivarfs, which init.firmware_trust mounts read-only once its
module is loaded (nothing on a node writes firmware variables).
Standard library only: PID 1 and stage 1 import this."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from k4s import layout
from k4s.errors import K4sError
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


def trust(efi: Path = EFI, securityfs: Path = SECURITYFS, tpm_sysfs: Path = tpm.SYSFS,
          measure_log: Path = layout.MEASURE_LOG, measured_boot: dict[str, Any] | None = None) -> dict[str, str]:
    """The fields of the boot's firmware event: firmware=uefi|bios, secure_boot=on|off,
    lockdown=MODE, and with a TPM the PCR stage 1 measured the payload into (pcr15=hex), with
    its log's length and whether the log replays to that value (log_events=N log_replays=yes|no).
    `measured_boot`: measured()'s answer if the caller has read it already."""
    uefi = efi.is_dir()
    out = {"firmware": "uefi" if uefi else "bios",
           "secure_boot": "on" if uefi and secure_boot(efi / "efivars") else "off",
           "lockdown": lockdown(securityfs)}
    m = measured_boot or measured(tpm_sysfs, measure_log)
    if m and (value := m["pcrs"][str(tpm.MEASURED_PCR)]):
        out[f"pcr{tpm.MEASURED_PCR}"] = value
    if m and (m["log"] or m["error"]):
        out["log_events"], out["log_replays"] = str(len(m["log"])), "yes" if m["replays"] else "no"
    return out


def measured(tpm_sysfs: Path = tpm.SYSFS, measure_log: Path = layout.MEASURE_LOG) -> dict[str, Any] | None:
    """With a TPM: the values of the PCRs a sealed secret is bound to, and stage 1's log of what
    it extended PCR 15 with, replayed: if the replay equals the PCR, the log says what booted."""
    values = {p: tpm.read(p, tpm_sysfs) for p in tpm.SEALED_PCRS}
    if not any(values.values()):
        return None
    try:
        records, error = tpm.read_log(measure_log), ""
    except K4sError as e:
        records, error = [], e.message
    replayed = tpm.replay(r["digest"] for r in records if r["pcr"] == tpm.MEASURED_PCR)
    return {"pcrs": {str(p): v for p, v in values.items()}, "log": records, "error": error,
            "replays": bool(records) and replayed == values[tpm.MEASURED_PCR]}
