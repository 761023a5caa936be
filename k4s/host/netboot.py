"""Serving a payload over the network: a directory with the kernel, its initrds
(the initramfs, then the seed), an iPXE script that loads them over HTTP, and
the signed manifest; and a small HTTP server for it.

    NIC's iPXE ROM --DHCP (+TFTP: boot.ipxe)--> iPXE --HTTP--> kernel + initrds --> k4s init

Nothing that iPXE loads is verified by iPXE here (Debian's ROMs are built
without `imgverify`): on plain PXE the root of trust is the network. The
manifest is for what comes after a first stage that checks it.
"""

from __future__ import annotations

import os
import shutil
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from k4s import log
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import manifest

SCRIPT = "boot.ipxe"
KERNEL = "vmlinuz"
DEFAULT_PORT = 8080


def ipxe_script(base_url: str, kernel: str, initrds: list[str], cmdline: str) -> str:
    """iPXE loads the kernel and every initrd in order (it concatenates them for Linux),
    then boots; `${next-server}` in base_url is the DHCP server's next-server (TFTP) address."""
    lines = ["#!ipxe", "echo k4s: fetching the payload from " + base_url,
             f"kernel {base_url}{kernel} {cmdline}".rstrip()]
    lines += [f"initrd {base_url}{name}" for name in initrds]
    lines += ["boot", ""]
    return "\n".join(lines)


def parts_from_report(report: Path) -> list[manifest.Artifact]:
    """The squashfs parts mkimage recorded (--report): name, size, sha256."""
    import json

    try:
        doc = json.loads(report.read_text())
        return [manifest.Artifact(p["name"], "part", int(p["size"]), p["sha256"]) for p in doc.get("parts", [])]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise K4sError(f"cannot read the parts from {report}: {e}", hint="run `make image` (it writes the report)") from e


def _place(src: Path, dst: Path) -> None:
    if not src.is_file():
        raise K4sError(f"{src} not found", hint="run `make image` first")
    tmp = dst.with_name(f".{dst.name}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src.resolve(), tmp)  # no copy of 80 MB when out/ is one filesystem
    except OSError:
        shutil.copyfile(src, tmp)
    os.chmod(tmp, 0o644)
    os.replace(tmp, dst)


def prepare(directory: Path, kernel: Path, initrds: list[Path], cmdline: str,
            base_url: str = f"http://${{next-server}}:{DEFAULT_PORT}/", key: Path | None = None,
            parts: list[manifest.Artifact] = (),  # type: ignore[assignment]
            serial: int | None = None, valid: int = manifest.DEFAULT_VALIDITY) -> list[str]:
    """The payload directory: the kernel as vmlinuz, the initrds under their own names,
    boot.ipxe, and (with a signing key) manifest.json + manifest.sig, which also name the
    squashfs parts inside the initramfs (`parts`, from mkimage's report). The file names."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():  # the directory is the payload: nothing left from before
        if stale.is_file():
            stale.unlink()
    _place(kernel, directory / KERNEL)
    names = []
    for p in initrds:
        if p.name in names or p.name == KERNEL or p.name in manifest.RESERVED:
            raise K4sError(f"two payload files would be named {p.name}", hint="rename one of the initrds")
        _place(p, directory / p.name)
        names.append(p.name)
    write_atomic(directory / SCRIPT, ipxe_script(base_url, KERNEL, names, cmdline))
    if key is not None:
        manifest.sign(directory, key, [(KERNEL, "kernel"), *((n, "initrd") for n in names)], cmdline, parts,
                      serial, valid)
    return [KERNEL, *names, SCRIPT]


class _Handler(SimpleHTTPRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.event("netboot", "sent", client=self.client_address[0], path=self.path, status=int(code))

    def log_message(self, fmt: str, *args: object) -> None:
        pass  # errors reach the client as a status, and log_request has the line

    def list_directory(self, path: str):  # type: ignore[no-untyped-def]
        self.send_error(403, "no listings")
        return None


def server(directory: Path, address: str = "127.0.0.1", port: int = DEFAULT_PORT,
           tls: tuple[Path, Path] | None = None) -> ThreadingHTTPServer:
    """An HTTP server for the payload directory (files only, no listings); call serve_forever.
    With tls=(certificate, key): HTTPS, for a stage 1 built with a payload CA."""
    if not (directory / SCRIPT).is_file():
        raise K4sError(f"{directory} holds no {SCRIPT}", hint="run `k4s netboot prepare` (make netboot) first")

    class Handler(_Handler):
        def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(directory), **kw)

    try:
        srv = ThreadingHTTPServer((address, port), Handler)
    except OSError as e:
        raise K4sError(f"cannot listen on {address}:{port}: {e.strerror}", hint="pick another --port") from e
    srv.daemon_threads = True
    if tls is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        except (OSError, ssl.SSLError) as e:
            srv.server_close()
            raise K4sError(f"cannot load the TLS certificate {tls[0]} and key {tls[1]}: {e}",
                           hint="pass a PEM certificate and its PEM private key") from None
        srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
    return srv


def serve_in_thread(directory: Path, address: str = "127.0.0.1", port: int = 0,
                    tls: tuple[Path, Path] | None = None) -> ThreadingHTTPServer:
    srv = server(directory, address, port, tls)
    threading.Thread(target=srv.serve_forever, name="netboot", daemon=True).start()
    return srv
