"""etcd-snapshot: save a server's etcd snapshot from the operator's host, checked; restore one.

    k4s etcd-snapshot save FILE --remote https://NODE:10270 [--kubeconfig out/kubeconfig]
    k4s etcd-snapshot restore FILE --segment OUT   (the certificate key on stdin, or K4S_CERTIFICATE_KEY)

save: the server's endpoint streams its etcd member's database (cluster admins only: a
SubjectAccessReview for the path /etcd/snapshot); it is written to FILE.part (0600: it holds
every object, Secrets sealed with the servers' encryption key), its trailing sha256 checked,
then renamed to FILE. A stream cut short or altered leaves nothing at FILE. Beside it,
FILE.keys: the cluster's shared keys (CAs, service-account key, the encryption config), sealed
with a new certificate key, which is printed once (/etcd/keys, the same check). Keep the key
apart from the two files: with it they are the whole cluster.

restore: FILE and FILE.keys, checked (the sha256, the key opens every file), into a segment for
one machine (`k4s vm --join-secret OUT`, or as its own initrd segment): a server that boots
with it and no etcd data restores the database as a cluster of one, with the old CAs, and
deletes the segment.
"""

from __future__ import annotations

import os
from pathlib import Path

import click


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


@cli.command(help="Stream a server's etcd snapshot into FILE, checked against the sha256 etcd sends.")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False))
@click.option("--remote", "remote_url", metavar="URL", required=True,
              help="A server's endpoint, e.g. https://10.0.0.5:10270 (its metrics port).")
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=Path("out/kubeconfig"),
              show_default=True, help="A cluster admin's kubeconfig: whose client certificate to present.")
def save(file: Path, remote_url: str, kubeconfig: Path) -> int:
    import shutil
    import time
    import urllib.error
    import urllib.request

    from k4s.cluster import etcdsnapshot
    from k4s.errors import K4sError
    from k4s.host.operator import endpoint_context

    if not file.parent.is_dir():
        raise K4sError(f"{file}: no directory {file.parent}", hint="write it into an existing directory")
    part = file.with_name(file.name + ".part")
    started = time.monotonic()
    try:
        ctx = endpoint_context(kubeconfig)
        with urllib.request.urlopen(remote_url.rstrip("/") + etcdsnapshot.PATH, context=ctx, timeout=60) as r, \
                open(os.open(part, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
            shutil.copyfileobj(r, out, 1 << 20)
        size = etcdsnapshot.verify(part)
    except urllib.error.HTTPError as e:
        part.unlink(missing_ok=True)
        raise K4sError(f"{remote_url} refused the snapshot: HTTP {e.code} {e.read(200).decode(errors='replace').strip()}",
                       hint="it takes a cluster admin's kubeconfig, and a server's endpoint (a worker has no etcd)") from None
    except (OSError, K4sError) as e:
        part.unlink(missing_ok=True)
        if isinstance(e, K4sError):
            raise
        raise K4sError(f"cannot take the snapshot from {remote_url}: {e}", hint="is the server up and its port reachable?") from None
    try:
        key = save_keys(keys_file(file), remote_url, ctx)
    except K4sError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, file)
    click.echo(f"k4s: etcd snapshot {file}: {size} bytes, sha256 checked, {time.monotonic() - started:.1f}s; "
               f"its keys sealed in {keys_file(file)}", err=True)
    click.echo(f"k4s.certificate-key={key}")
    click.echo("k4s: keep the certificate key apart from the snapshot: with it, the two files are the whole "
               "cluster (`k4s etcd-snapshot restore` asks for it)", err=True)
    return 0


def keys_file(snapshot: Path) -> Path:
    return snapshot.with_name(snapshot.name + ".keys")


def save_keys(out: Path, remote_url: str, ctx: object) -> str:
    """The server's shared keys, sealed to a one-time key of this host's, written to out (0600,
    through out.part); the certificate key that opens them."""
    import base64
    import json
    import urllib.error
    import urllib.request

    from k4s.cluster import copycerts, etcdsnapshot
    from k4s.errors import K4sError
    from k4s.fsutil import write_atomic

    private, public = copycerts.new_request_key()
    url = f"{remote_url.rstrip('/')}{etcdsnapshot.KEYS_PATH}?public-key={base64.urlsafe_b64encode(public).decode()}"
    try:
        with urllib.request.urlopen(url, context=ctx, timeout=60) as r:  # type: ignore[arg-type]
            answer = json.loads(r.read(4 << 20))
    except urllib.error.HTTPError as e:
        raise K4sError(f"{remote_url} refused the keys: HTTP {e.code} {e.read(200).decode(errors='replace').strip()}",
                       hint="it takes a cluster admin's kubeconfig, and a server's endpoint") from None
    except (OSError, ValueError) as e:
        raise K4sError(f"cannot read the sealed keys from {remote_url}: {e}", hint="is the server up?") from None
    doc, key = etcdsnapshot.keys_of(answer, private)
    write_atomic(out, json.dumps(doc, indent=1).encode() + b"\n", 0o600)
    return key


@cli.command(help="Make a restore segment for one server from FILE and FILE.keys; the certificate key "
                  "`save` printed is read from stdin (or K4S_CERTIFICATE_KEY).")
@click.argument("file", type=click.Path(path_type=Path, dir_okay=False, exists=True))
@click.option("--segment", "out", type=click.Path(path_type=Path, dir_okay=False), required=True,
              help="Where to write the segment (0600): boot the server with `k4s vm --join-secret OUT`.")
@click.option("--keys", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="The sealed keys  [default: FILE.keys]")
def restore(file: Path, out: Path, keys: Path | None) -> int:
    import sys

    from k4s.cluster import copycerts, etcdsnapshot
    from k4s.errors import K4sError

    keys = keys or keys_file(file)
    key = os.environ.get("K4S_CERTIFICATE_KEY") or (
        click.prompt("certificate key", hide_input=True, err=True) if sys.stdin.isatty() else sys.stdin.readline())
    key = key.strip().removeprefix("k4s.certificate-key=")
    if not copycerts.HEX_KEY.fullmatch(key):
        raise K4sError("the certificate key is not 64 hex digits",
                       hint="give the line `k4s etcd-snapshot save` printed (k4s.certificate-key=...) on stdin")
    if not out.parent.is_dir():
        raise K4sError(f"{out}: no directory {out.parent}", hint="write it into an existing directory")
    size = etcdsnapshot.verify(file)
    try:
        text = keys.read_text()
    except (OSError, ValueError) as e:
        raise K4sError(f"cannot read the sealed keys {keys}: {getattr(e, 'strerror', None) or e}",
                       hint="`k4s etcd-snapshot save` writes them beside the snapshot as FILE.keys") from None
    doc, _ = etcdsnapshot.opened_keys(text, key, str(keys), "save the snapshot again")
    etcdsnapshot.segment(out, file, doc, key)
    click.echo(f"k4s: restore segment {out}: a {size}-byte database and {len(doc['data'])} sealed files; it holds "
               "the cluster's keys: give it to one machine, out of band", err=True)
    return 0
