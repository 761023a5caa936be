"""Stage 1, the LinuxBoot way: PID 1 of a small initramfs (in flash, or loaded by
PXE) that brings the network up, fetches the signed stage 2, verifies it while
it streams in, and boots it with kexec. Nothing unverified runs.

    k4s.payload=http://HOST/PATH/   (the kernel command line; may point anywhere)
    k4s.payload=https://HOST/PATH/  (when a CA bundle is built in: the server's certificate must
                                     verify with it and name HOST)
      -> PATH/manifest.json + manifest.sig: checked with the public key built into stage 1
      -> each artifact the manifest names (the kernel, the initrds in order): its size and
         sha256 checked as it streams into RAM; one byte too many stops it there
      -> for a worker's payload (node role agent): the machine's own join, from stage 1's
         own join segment if it was booted with one, else PATH/join/<mac> over https only
         (`netboot serve --kubeconfig` mints it); checked (its token and node name, nothing
         else: the server and the CA pin are in the signed command line) and wrapped here
         into one file, layout.JOIN_SECRET: never a segment from the network as it came
      -> kexec_file_load(kernel, the initrds concatenated, the signed command line), with one
         more segment last: the signed sha256 of each squashfs part, which stage 2's stage 0
         checks before it mounts any (layout.PARTS_CHECK)

Network errors are retried with back-off, a console line per try; a payload that
fails its check is one line naming the artifact and the reason, no kexec, and
`k4s.on-failure` applies.
"""

from __future__ import annotations

import http.client
import json
import os
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

from k4s import events, layout, log
from k4s.config import Config
from k4s.errors import K4sError
from k4s.image import manifest
from k4s.sys import libc, tpm

PUBLIC_KEY, PAYLOAD_CA, MIN_SERIAL = layout.STAGE1_PUBLIC_KEY, layout.STAGE1_PAYLOAD_CA, layout.STAGE1_MIN_SERIAL
PLAUSIBLE_NOW = 1_735_689_600  # 2025-01-01: a clock before it was never set, and cannot check an expiry
TRIES = 8
BACKOFF = (1.0, 30.0)
TIMEOUT = 30.0


class CertificateError(K4sError):
    """The payload server's certificate does not verify: retrying cannot help."""


class Fetch:
    """GETs below one base URL (HTTP, or HTTPS checked against the built-in CA bundle),
    retried with back-off on network errors."""

    def __init__(self, base: str, ca: Path = PAYLOAD_CA) -> None:
        u = urllib.parse.urlsplit(base)
        self.host, self.path = u.hostname or "", u.path
        self.ctx = None
        if u.scheme == "https":
            if not ca.is_file():
                raise K4sError(f"payload {base} is https, but this stage 1 has no CA bundle to check it with",
                               hint="build stage 1 with `mkimage --stage1 --payload-ca FILE`, or serve over http:// "
                                    "(the payload is verified either way)")
            import ssl

            self.ctx = ssl.create_default_context(cafile=str(ca))  # the server's name is checked too
        elif u.scheme != "http":
            raise K4sError(f"payload {base}: not http:// or https://", hint="write k4s.payload=http://HOST/PATH/")
        self.port = u.port or (443 if self.ctx else 80)

    def _connection(self) -> http.client.HTTPConnection:
        if self.ctx is not None:
            return http.client.HTTPSConnection(self.host, self.port, timeout=TIMEOUT, context=self.ctx)
        return http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)

    def _chunks(self, name: str) -> Iterator[bytes]:
        conn = self._connection()
        try:
            try:
                conn.request("GET", self.path + name)
            except OSError as e:
                if type(e).__name__ == "SSLCertVerificationError":
                    raise CertificateError(f"payload server {self.host}:{self.port}: its certificate does not "
                                           f"verify with the built-in CA bundle ({getattr(e, 'verify_message', e)})",
                                           hint="serve the payload with a certificate from the CA stage 1 was "
                                                "built with (mkimage --payload-ca)") from None
                raise
            r = conn.getresponse()
            if r.status != 200:
                raise OSError(f"HTTP {r.status}")
            while chunk := r.read(1 << 20):
                yield chunk
        finally:
            conn.close()

    def get(self, name: str, consume):  # type: ignore[no-untyped-def]
        """consume(chunks) for the file; a network error retries from the start (a VerifyError
        does not: a payload that fails its check does not get better)."""
        delay = BACKOFF[0]
        for attempt in range(1, TRIES + 1):
            try:
                return consume(self._chunks(name))
            except (OSError, http.client.HTTPException) as e:
                if attempt == TRIES:
                    raise K4sError(f"cannot fetch {self.path}{name} from {self.host}:{self.port} after {TRIES} "
                                   f"tries: {e}", hint="check the network and k4s.payload=") from None
                log.event("stage1", "retry", file=name, attempt=attempt, error=str(e) or type(e).__name__,
                          retry_in=delay)
                time.sleep(delay)
                delay = min(delay * 2, BACKOFF[1])
    # a failed artifact is never retried from the verified bytes: each try streams it again


def min_serial(path: Path = MIN_SERIAL) -> int:
    try:
        return int(path.read_text().strip())
    except FileNotFoundError:
        return 0
    except (OSError, ValueError):
        raise K4sError(f"{path} is not a number", hint="rebuild stage 1 (mkimage --stage1 --min-serial N)") from None


def now() -> float:
    t = time.time()
    if t < PLAUSIBLE_NOW:
        raise K4sError(f"the clock says {time.strftime('%Y-%m-%d', time.gmtime(t))}: a manifest's expiry cannot be "
                       "checked", hint="set the machine's real-time clock (firmware setup)")
    return t


def fetch_verified(base: str, directory: Path, pub: bytes, role: str | None = None) -> manifest.Manifest:
    """The signed manifest (fresh: not below the built-in minimum serial, not expired, for this
    machine's role if it names one), then every kernel and initrd it names, each checked as it
    arrives."""
    f = Fetch(base)
    raw = f.get(manifest.MANIFEST, lambda cs: _bounded(cs, manifest.MAX_MANIFEST, manifest.MANIFEST))
    sig = f.get(manifest.SIGNATURE, lambda cs: _bounded(cs, 4096, manifest.SIGNATURE))
    m = manifest.parse(raw, sig, pub)
    m.check_fresh(min_serial(), now(), role)
    log.event("stage1", "manifest", serial=m.serial, node_role=m.node_role)
    if len(m.by_role("kernel")) != 1:
        raise manifest.VerifyError(f"{manifest.MANIFEST}: names {len(m.by_role('kernel'))} kernels, not one")
    directory.mkdir(parents=True, exist_ok=True)
    for art in [*m.by_role("kernel"), *m.by_role("initrd")]:
        t0 = time.monotonic()

        def consume(chunks: Iterator[bytes], art: manifest.Artifact = art) -> int:
            with open(directory / art.name, "wb") as out:
                return manifest.check_stream(art, chunks, out)

        n = f.get(art.name, consume)
        log.event(*events.STAGE1_VERIFIED, file=art.name, bytes=n, seconds=time.monotonic() - t0)
    return m


def _bounded(chunks: Iterator[bytes], limit: int, name: str) -> bytes:
    out = b""
    for c in chunks:
        out += c
        if len(out) > limit:
            raise manifest.VerifyError(f"{name}: more than {limit} bytes")
    return out


def fetch_join(f: Fetch, iface: str, out: Path, own: Path = layout.JOIN_SECRET) -> Path | None:
    """The machine's join segment for stage 2 (see the module's docstring), or None when there is
    none to hand on (stage 2 then says what it lacks). The words are checked before they are
    wrapped: a join handed on may set its token and node name and nothing else
    (joinsecret.HANDED_ON)."""
    from k4s.cluster import joinsecret

    if own.is_file():
        words, where = own.read_text(errors="replace"), "stage 1's own segment"
    elif f.ctx is None:  # plain http: anyone on the way would read the token, or hand over another
        log.event(*events.STAGE1_JOIN, level="warn", found=False,
                  reason="a join is fetched only over https (mkimage --stage1 --payload-ca)")
        return None
    else:
        try:
            mac = Path(f"/sys/class/net/{iface}/address").read_text().strip().replace(":", "")
        except OSError:
            return None
        words, where = _get_join(f, mac), f"{f.path}join/{mac}"
        if words is None:
            log.event(*events.STAGE1_JOIN, found=False, asked=where)
            return None
    out.write_bytes(joinsecret.segment(joinsecret.words(words, joinsecret.HANDED_ON)))
    out.chmod(0o600)
    log.event(*events.STAGE1_JOIN, found=True, source=where)
    return out


def _get_join(f: Fetch, mac: str) -> str | None:
    """GET join/<mac>: its words, None on 404 (no join for this machine), retried on other errors."""
    from k4s.config import MAX_JOIN_SECRET

    for attempt in range(1, 4):
        conn = f._connection()
        try:
            conn.request("GET", f"{f.path}join/{mac}")
            r = conn.getresponse()
            if r.status == 404:
                return None
            body = r.read(MAX_JOIN_SECRET + 1)
            if r.status == 200 and len(body) <= MAX_JOIN_SECRET:
                return body.decode("utf-8", errors="replace")
            error = f"HTTP {r.status}" if r.status != 200 else "more than a join's bytes"
        except (OSError, http.client.HTTPException) as e:
            error = str(e) or type(e).__name__
        finally:
            conn.close()
        log.event("stage1", "retry", file=f"join/{mac}", attempt=attempt, error=error)
        time.sleep(attempt)
    raise K4sError(f"cannot fetch this machine's join from {f.host}:{f.port}: {error}",
                   hint="is `netboot serve --kubeconfig` running, and the server up?")


def measure(m: manifest.Manifest) -> list[tuple[str, str]]:
    """With a TPM: extend tpm.MEASURED_PCR with what was verified (manifest.measurements),
    before anything of it runs, so the PCR says which payload booted and a secret sealed to it
    opens only for that payload; what it extended, in order. Without one: an event saying so."""
    if not tpm.present():
        log.event(*events.STAGE1_MEASURED, tpm=False)
        return []
    measured = manifest.measurements(m)
    tpm.extend(tpm.MEASURED_PCR, [bytes.fromhex(digest) for _, digest in measured])
    log.event(*events.STAGE1_MEASURED, tpm=True, pcr=tpm.MEASURED_PCR, extended=len(measured),
              value=tpm.read(tpm.MEASURED_PCR))
    return measured


def handoff(m: manifest.Manifest, measured: list[tuple[str, str]], out: Path) -> Path:
    """The last initrd segment: the signed hashes of stage 2's squashfs parts, for its stage 0
    to check before it mounts them, and the log of what PCR 15 was extended with, for stage 2
    to show (k4s status) and replay. Last, so no segment of the payload can replace it."""
    import stat

    from k4s.image import cpio

    entries = [cpio.Entry(layout.member(layout.PARTS_CHECK), stat.S_IFREG | 0o444,
                          manifest.parts_check(m, str(layout.PARTS_DIR)))] if m.by_role("part") else []
    if measured:
        records = "".join(json.dumps(tpm.log_record(i, tpm.MEASURED_PCR, digest, name)) + "\n"
                          for i, (name, digest) in enumerate(measured))
        entries.append(cpio.Entry(layout.member(layout.MEASURE_LOG), stat.S_IFREG | 0o444, records.encode()))
    out.write_bytes(cpio.bytes_of(entries))
    log.event(*events.STAGE1_HANDOFF, parts=len(m.by_role("part")), measured=len(measured))
    return out


def join_initrds(initrds: list[Path], out: Path, consume: bool = False) -> None:
    """The initrds concatenated, each padded to 4 bytes as the kernel reads them; with
    consume, each is removed once copied (RAM: keep one copy)."""
    with open(out, "wb") as f:
        for p in initrds:
            with open(p, "rb") as src:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            f.write(b"\0" * (-f.tell() % 4))
            if consume:
                p.unlink()


def load(kernel: Path, initrd: Path | None, cmdline: str) -> None:
    kfd = os.open(kernel, os.O_RDONLY | os.O_CLOEXEC)
    ifd = os.open(initrd, os.O_RDONLY | os.O_CLOEXEC) if initrd else None
    try:
        libc.kexec_file_load(kfd, ifd, cmdline)
    except OSError as e:
        raise K4sError(f"kexec_file_load: {e.strerror}", hint="as root, on a kernel with CONFIG_KEXEC_FILE; a "
                       "signed-kernel policy (KEXEC_SIG_FORCE, lockdown) refuses an unsigned kernel") from None
    finally:
        os.close(kfd)
        if ifd is not None:
            os.close(ifd)


def execute() -> None:
    log.console("k4s: booting the loaded kernel (kexec)")
    os.sync()
    libc.reboot(libc.RB_KEXEC)


def kexec(kernel: Path, initrds: list[Path], cmdline: str) -> None:
    """Load the kernel with the initrds, then reboot into it. Returns only by raising."""
    initrd = kernel.with_name("initrd.img") if initrds else None
    if initrd:
        join_initrds(initrds, initrd, consume=True)
    load(kernel, initrd, cmdline)
    execute()


def boot() -> str:
    """Stage 1 as PID 1: kexec into the verified stage 2, or raise."""
    from k4s import config
    from k4s.boot import init, netconf

    init.mount_all()
    cfg: Config = config.load(cmdline=config.read_proc_cmdline())
    paths = layout.Paths.of(cfg.data_dir, cfg.run_dir)
    log.setup(paths.logs, cfg.log_level, events=paths.events, device=f"/dev/{cfg.events}" if cfg.events else None)
    if not cfg.payload:
        raise K4sError("no k4s.payload= on the kernel command line", hint="boot stage 1 with "
                       "k4s.payload=http://HOST/PATH/ (the directory `k4s netboot prepare` writes)")
    try:
        pub = manifest.public_key(PUBLIC_KEY)
    except K4sError as e:
        raise K4sError(f"stage 1 has no public key: {e.message}", hint="rebuild stage 1 (make stage1)") from None
    if cfg.log_level == "debug":  # the libraries' own logs (pyroute2's DHCP client) on the console
        import logging

        logging.basicConfig(level=logging.DEBUG, format="%(name)s: %(message)s")
    n, freed = init.load_modules()  # the freed RAM is room for the payload it fetches
    init.stage(events.MODULES.event, loaded=n, freed_kib=freed >> 10)
    log.event(*events.STAGE1_FIRMWARE, **init.firmware_trust())
    iface, ip = netconf.setup(cfg, paths.run)
    log.event("stage1", "fetch", payload=cfg.payload)
    t0 = time.monotonic()
    stage2 = paths.run / "stage2"
    m = fetch_verified(cfg.payload, stage2, pub, cfg.role if cfg.sources.get("role") != "default" else None)
    total = sum(a.size for a in [*m.by_role("kernel"), *m.by_role("initrd")])
    log.event(*events.STAGE1_PAYLOAD_VERIFIED, bytes=total, seconds=time.monotonic() - t0)
    initrds = [stage2 / a.name for a in m.by_role("initrd")]
    if m.node_role == "agent" and (join := fetch_join(Fetch(cfg.payload), iface, stage2 / "join.cpio")):
        initrds.append(join)
    measured = measure(m)
    if m.by_role("part") or measured:
        initrds.append(handoff(m, measured, stage2 / "handoff.cpio"))
    kexec(stage2 / m.by_role("kernel")[0].name, initrds, m.cmdline)
    raise K4sError("reboot(RB_KEXEC) returned", hint="the kernel refused to kexec")


def main() -> None:
    """PID 1 of stage 1. Never returns: kexec, or the failure action."""
    from k4s.boot import init

    init.run_pid1("stage1", boot, "nothing was booted")
