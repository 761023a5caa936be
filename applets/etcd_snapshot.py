"""etcd-snapshot: save a server's etcd snapshot from the operator's host, checked.

    k4s etcd-snapshot save FILE --remote https://NODE:10270 [--kubeconfig out/kubeconfig]

The server's endpoint streams its etcd member's database (cluster admins only: a
SubjectAccessReview for the path /etcd/snapshot); it is written to FILE.part (0600: it holds
every object, Secrets sealed with the servers' encryption key), its trailing sha256 checked,
then renamed to FILE. A stream cut short or altered leaves nothing at FILE.
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
    os.replace(part, file)
    click.echo(f"k4s: etcd snapshot {file}: {size} bytes, sha256 checked, {time.monotonic() - started:.1f}s")
    return 0
