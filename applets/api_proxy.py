"""api-proxy: one address for the API of a cluster of several servers, on the operator's host.

    k4s api-proxy --server https://HOST:PORT [--server ...] [--kubeconfig out/kubeconfig]
                  [--listen 127.0.0.1:6444] [--write-kubeconfig out/kubeconfig-ha]

The TCP load balancer a worker runs in front of its kubelet (k4s.cluster.apilb, as k3s's agent
does), for the operator: each connection goes, bytes untouched, to the server that accepted
last, else to the next one; a server that refused a connection, or whose connection broke, is
tried after the others for a minute. The kubeconfig's server comes first, then each --server in
the order given. TLS still ends at an apiserver (each one's certificate names 127.0.0.1 and
verifies with the cluster CA), so the proxy holds no secret and cannot stand in for the cluster.

With --write-kubeconfig it writes a copy of the kubeconfig (0600) that names the proxy, once it
listens: kubectl through that copy goes on when a server is lost. It runs until SIGINT or
SIGTERM; the copy stays for the next run.
"""

from __future__ import annotations

import signal
import threading
import urllib.parse
from pathlib import Path

import click

from k4s.errors import K4sError


def address(text: str, what: str) -> tuple[str, int]:
    """(host, port) of a server's https://HOST:PORT, or of a listen address's HOST:PORT."""
    scheme, form = ("https", "https://HOST:PORT") if what == "server" else ("", "HOST:PORT")
    u = urllib.parse.urlsplit(text if scheme else f"//{text}")
    try:
        port = u.port
    except ValueError:
        port = None
    if u.scheme != scheme or not u.hostname or port is None or u.path not in ("", "/"):
        raise K4sError(f"{what} {text!r} is not {form}",
                       hint="e.g. " + ("https://10.0.0.5:6443" if scheme else "127.0.0.1:6444"))
    return u.hostname, port


def proxied_kubeconfig(text: str, url: str) -> str:
    """The kubeconfig with its current context's cluster at url (credentials and CA kept)."""
    import yaml

    doc = yaml.safe_load(text)  # kubeapi.kubeconfig_tls has read it: a current context and its cluster
    name = next(c["context"]["cluster"] for c in doc["contexts"] if c["name"] == doc["current-context"])
    next(c for c in doc["clusters"] if c["name"] == name)["cluster"]["server"] = url
    return yaml.safe_dump(doc, sort_keys=False)


@click.command(help=__doc__.split("\n\n")[0])
@click.option("--kubeconfig", type=click.Path(path_type=Path, dir_okay=False), default=Path("out/kubeconfig"),
              show_default=True, help="The operator's kubeconfig: its server is tried first.")
@click.option("--server", "servers", multiple=True, metavar="URL",
              help="Another server's apiserver, https://HOST:PORT (repeat for each).")
@click.option("--listen", default="127.0.0.1:6444", show_default=True, metavar="HOST:PORT",
              help="Where the proxy listens (port 0: any free one; the written kubeconfig names it).")
@click.option("--write-kubeconfig", "write", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the kubeconfig's copy that names the proxy here (0600).")
def cli(kubeconfig: Path, servers: tuple[str, ...], listen: str, write: Path | None) -> int:
    from k4s import log
    from k4s.cluster import apilb, kubeapi
    from k4s.fsutil import write_atomic

    server, _ = kubeapi.kubeconfig_tls(kubeconfig)  # one line if it cannot be read or is not one
    first = address(server, "server")
    given = list(dict.fromkeys([first, *(address(s, "server") for s in servers)]))
    host, port = address(listen, "listen address")
    if write is not None and write.resolve() == kubeconfig.resolve():
        raise K4sError(f"--write-kubeconfig {write} is the kubeconfig it reads",
                       hint="write the proxy's copy to another file")
    lb = apilb.Balancer(first, host, port)
    bound, at = lb.address
    url = f"https://[{bound}]:{at}" if ":" in bound else f"https://{bound}:{at}"
    if write is not None:  # one line if it cannot be (and nothing half-written)
        write_atomic(write, proxied_kubeconfig(kubeconfig.read_text(), url), 0o600)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.console(f"k4s api-proxy: {url} -> {', '.join(apilb.hostport(a) for a in given)}"
                + (f"; kubectl --kubeconfig {write}" if write is not None else ""))
    lb.update(given[1:])  # tried in the order given: the kubeconfig's server is the current one
    lb.start()
    stop.wait()
    lb.stop()
    return 0
