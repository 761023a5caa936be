"""Serving a payload over the network: a directory with the kernel, its initrds
(the initramfs, then the seed), an iPXE script that loads them over HTTP, and
the signed manifest; and a small HTTP server for it.

    NIC's iPXE ROM --DHCP (+TFTP: boot.ipxe)--> iPXE --HTTP--> kernel + initrds --> k4s init

Nothing that iPXE loads is verified by iPXE here (Debian's ROMs are built
without `imgverify`): on plain PXE the root of trust is the network. The
manifest is for what comes after a first stage that checks it.

Workers' join secrets are per machine, never in the public payload: given a
kubeconfig, the server answers `GET /join/<mac>` (the words, for stage 1, which
wraps them into a segment itself, and fetches them only over https) and
`/join/<mac>.cpio` (the segment, for boot.ipxe's `initrd`) with the node name that
machine derives from its MAC (k4s-<last 3 bytes>) and a fresh single-use token
bound to it, valid JOIN_TTL; the one minted before for that name is deleted, and
a name whose node is Ready gets none. The server and the CA pin are not in it:
they are in the payload's command line (`prepare --join`), signed for stage 1.
Whoever can ask for a machine's URL before it does can race it for its name:
the server then refuses both (k4s.cluster.approver); as with any PXE, plain
http trusts the network.
"""

from __future__ import annotations

import os
import re
import shutil
import threading
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from k4s import log
from k4s.errors import K4sError
from k4s.fsutil import write_atomic
from k4s.image import manifest

SCRIPT = "boot.ipxe"
KERNEL = "vmlinuz"
UEFI_IMAGE = manifest.UEFI_IMAGE  # a UEFI NIC's boot file (QEMU's TFTP, or a DHCP server's filename)
DEFAULT_PORT = 8080
JOIN_PREFIX = "/join/"
JOIN_TTL = 3600  # seconds: the machine asks for it as it boots
_MAC = re.compile(r"[0-9a-f]{12}")


def mac_key(text: str) -> str:
    """A MAC as 12 lower-case hex digits (iPXE's ${net0/mac:hexraw}); ValueError if it is not one."""
    m = text.lower().replace(":", "").replace("-", "")
    if not _MAC.fullmatch(m):
        raise ValueError(f"{text[:40]!r} is not a MAC address")
    return m


def node_name_for(mac: str) -> str:
    """The node name a machine takes by default (k4s.boot.init.default_node_name)."""
    return f"k4s-{mac_key(mac)[-6:]}"


class JoinMinter:
    """Mints each booting machine's join through the apiserver (the operator's kubeconfig)."""

    def __init__(self, kubeconfig: Path, ttl: int = JOIN_TTL, server: str = "") -> None:
        self.kubeconfig, self.ttl, self.server = kubeconfig, ttl, server

    def __call__(self, mac: str) -> str:
        """The machine's join: its node name and a fresh token bound to it, nothing else (the
        server and the CA pin are in the payload's signed command line: `prepare --join`). The
        token minted for that name before is deleted: one live token per machine, however
        often it is asked for. A name whose node is Ready gets none."""
        import datetime as dt

        from k4s.cluster import approver, kubeapi
        from k4s.errors import K4sError
        from k4s.host import tokens

        name = node_name_for(mac)
        client = kubeapi.Client.from_kubeconfig(self.kubeconfig)
        node = client.get_or_none(f"/api/v1/nodes/{name}")
        if node is not None and approver.ready(node):
            raise K4sError(f"node {name} is Ready: no join for it", hint="a running node needs none")
        for old in tokens.listed(client):
            if old.node == name and old.description == f"netboot {name}":
                tokens.delete(client, old.id)
        token_id, secret = tokens.create(client, dt.timedelta(seconds=self.ttl), f"netboot {name}", name)
        log.event("netboot", "join-minted", node=name, token=token_id)
        return f"k4s.node-name={name} k4s.token={token_id}.{secret}"


def join_line(kubeconfig: Path, server: str = "") -> str:
    """The public half of every worker's join, for a worker payload's (signed) command line:
    the role, the server and the cluster CA's pin, read from cluster-info."""
    from k4s.cluster import kubeapi
    from k4s.cluster.pki import spki_hash_pem
    from k4s.host import tokens

    published, ca = tokens.cluster_server_and_ca(kubeapi.Client.from_kubeconfig(kubeconfig))
    return tokens.join_line(server or published, spki_hash_pem(ca))


def ipxe_script(base_url: str, kernel: str, initrds: list[str], cmdline: str, join: bool = False) -> str:
    """iPXE loads the kernel and every initrd in order (it concatenates them for Linux),
    then boots; `${next-server}` in base_url is the DHCP server's next-server (TFTP) address.
    With join, the machine's own join segment last (a worker's; none is no error)."""
    lines = ["#!ipxe", "echo k4s: fetching the payload from " + base_url,
             f"kernel {base_url}{kernel} {cmdline}".rstrip()]
    lines += [f"initrd {base_url}{name}" for name in initrds]
    if join:
        lines += [f"initrd {base_url}{JOIN_PREFIX.strip('/')}/${{net0/mac:hexraw}}.cpio || "
                  "echo k4s: no join secret for this machine"]
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
            serial: int | None = None, valid: int = manifest.DEFAULT_VALIDITY, join: bool = False,
            secure_boot_keys: Path | None = None, uki: Path | None = None) -> list[str]:
    """The payload directory: the kernel as vmlinuz, the initrds under their own names,
    boot.ipxe, and (with a signing key) manifest.json + manifest.sig, which also name the
    squashfs parts inside the initramfs (`parts`, from mkimage's report). With
    `secure_boot_keys`, the kernel is signed with their db key first: a stage 1 booted under
    Secure Boot runs a locked-down kernel, which kexecs only a kernel its firmware's db
    signed. With `uki`, stage 1's signed UKI as stage1.efi, for a UEFI NIC's network boot
    (outside the manifest: the firmware verifies it). The file names."""
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.iterdir():  # the directory is the payload: nothing left from before
        if stale.is_file():
            stale.unlink()
    if secure_boot_keys is not None:
        from k4s.host import secureboot

        secureboot.sign(kernel, directory / KERNEL, secure_boot_keys)
    else:
        _place(kernel, directory / KERNEL)
    names = []
    for p in initrds:
        if p.name in names or p.name == KERNEL or p.name in manifest.RESERVED:
            raise K4sError(f"two payload files would be named {p.name}", hint="rename one of the initrds")
        _place(p, directory / p.name)
        names.append(p.name)
    write_atomic(directory / SCRIPT, ipxe_script(base_url, KERNEL, names, cmdline, join))
    if uki is not None:
        _place(uki, directory / UEFI_IMAGE)
    if key is not None:
        manifest.sign(directory, key, [(KERNEL, "kernel"), *((n, "initrd") for n in names)], cmdline, parts,
                      serial, valid)
    return [KERNEL, *names, SCRIPT, *([UEFI_IMAGE] if uki is not None else [])]


class _Handler(SimpleHTTPRequestHandler):
    mint: Callable[[str], str] | None = None

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.event("netboot", "sent", client=self.client_address[0], path=self.path, status=int(code))

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        if self.path.startswith(JOIN_PREFIX):
            return self.send_join(self.path[len(JOIN_PREFIX):])
        return super().do_GET()

    def send_join(self, name: str) -> None:
        """A machine's join: words (for stage 1) or a segment (name.cpio, for iPXE)."""
        from k4s.cluster import joinsecret
        from k4s.errors import K4sError

        wrap = name.endswith(".cpio")
        try:
            mac = mac_key(name.removesuffix(".cpio"))
        except ValueError:
            return self.send_error(404, "not a machine")
        if self.mint is None:
            return self.send_error(404, "this server mints no joins (netboot serve --kubeconfig)")
        try:
            words = self.mint(mac)  # type: ignore[misc]
        except (OSError, K4sError) as e:
            log.event("netboot", "join-failed", level="warn", mac=mac, error=str(e))
            return self.send_error(409 if "is Ready" in str(e) else 503, "no join for this machine now")
        body = joinsecret.segment(words) if wrap else (words + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, fmt: str, *args: object) -> None:
        pass  # errors reach the client as a status, and log_request has the line

    def list_directory(self, path: str):  # type: ignore[no-untyped-def]
        self.send_error(403, "no listings")
        return None


def server(directory: Path, address: str = "127.0.0.1", port: int = DEFAULT_PORT,
           tls: tuple[Path, Path] | None = None, mint: Callable[[str], str] | None = None) -> ThreadingHTTPServer:
    """An HTTP server for the payload directory (files only, no listings); call serve_forever.
    With tls=(certificate, key): HTTPS, for a stage 1 built with a payload CA. With mint
    (a JoinMinter): each machine's join at /join/<mac>."""
    if not (directory / SCRIPT).is_file():
        raise K4sError(f"{directory} holds no {SCRIPT}", hint="run `k4s netboot prepare` (make netboot) first")

    class Handler(_Handler):
        def __init__(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
            super().__init__(*a, directory=str(directory), **kw)

    Handler.mint = staticmethod(mint) if mint else None  # type: ignore[assignment]

    ctx = None
    if tls is not None:
        import ssl

        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
        except (OSError, ssl.SSLError) as e:
            raise K4sError(f"cannot load the TLS certificate {tls[0]} and key {tls[1]}: {e}",
                           hint="pass a PEM certificate and its PEM private key") from None
    try:
        if ctx is not None:  # handshakes on each connection's thread, never in the accept loop
            from k4s.tlsserve import TLSThreadingServer

            srv: ThreadingHTTPServer = TLSThreadingServer((address, port), Handler, lambda: ctx)
        else:
            srv = ThreadingHTTPServer((address, port), Handler)
    except OSError as e:
        raise K4sError(f"cannot listen on {address}:{port}: {e.strerror}", hint="pick another --port") from e
    srv.daemon_threads = True
    return srv


def serve_in_thread(directory: Path, address: str = "127.0.0.1", port: int = 0,
                    tls: tuple[Path, Path] | None = None, mint: Callable[[str], str] | None = None) -> ThreadingHTTPServer:
    srv = server(directory, address, port, tls, mint)
    threading.Thread(target=srv.serve_forever, name="netboot", daemon=True).start()
    return srv
