"""token: make, list and delete bootstrap tokens that let workers join (kubeadm token).

    k4s token create [--ttl 24h] [--server https://HOST:6443] [--kubeconfig out/kubeconfig]
    k4s token list | delete ID

`create` prints the kernel command line a worker boots with, like `kubeadm token
create --print-join-command`: the server, the token, and the cluster CA's hash
(the worker checks the CA against it before it trusts anything). Run on the
operator's host; it reaches the cluster through the apiserver.
"""

from __future__ import annotations

from pathlib import Path

import click

KUBECONFIG = click.option("--kubeconfig", type=click.Path(path_type=Path), default=Path("out/kubeconfig"),
                          show_default=True, help="The operator's kubeconfig (k4s vm writes it).")


@click.group(help=__doc__.split("\n\n")[0])
def cli() -> None:
    pass


def with_client(kubeconfig: Path, fn):  # type: ignore[no-untyped-def]
    """fn(client), with an apiserver that cannot be reached as one line, not a traceback."""
    from k4s.cluster import kubeapi
    from k4s.errors import K4sError

    client = kubeapi.Client.from_kubeconfig(kubeconfig)
    try:
        return fn(client)
    except OSError as e:
        raise K4sError(f"cannot reach the apiserver at {client.host}:{client.port}: {e.strerror or e}",
                       hint="is the server up (make up)? is --kubeconfig its kubeconfig?") from None


@cli.command(help="Make a token and print the worker's join line.")
@click.option("--ttl", default="24h", show_default=True, help="How long the token lives (e.g. 30m, 24h).")
@click.option("--server", default="", help="The apiserver URL workers use [default: the one cluster-info names].")
@click.option("--description", default="k4s worker join", show_default=True)
@KUBECONFIG
def create(ttl: str, server: str, description: str, kubeconfig: Path) -> int:
    from k4s.cluster.pki import spki_hash_pem
    from k4s.host import tokens

    lifetime = tokens.parse_ttl(ttl)  # checked before anything is asked of the server

    def make(client):  # type: ignore[no-untyped-def]
        published, ca = tokens.cluster_server_and_ca(client)
        token_id, secret = tokens.create(client, lifetime, description)
        return tokens.join_line(server or published, f"{token_id}.{secret}", spki_hash_pem(ca))

    click.echo(with_client(kubeconfig, make))
    return 0


@cli.command(name="list", help="List the bootstrap tokens (ids and expiry; never the secrets).")
@KUBECONFIG
def list_(kubeconfig: Path) -> int:
    from k4s.host import tokens

    listed = with_client(kubeconfig, tokens.listed)
    click.echo(f"{'ID':<8} {'EXPIRES':<22} DESCRIPTION")
    for t in listed:
        click.echo(f"{t.id:<8} {t.expires:<22} {t.description}")
    return 0


@cli.command(help="Delete a token: workers not yet joined with it cannot join.")
@click.argument("token_id")
@KUBECONFIG
def delete(token_id: str, kubeconfig: Path) -> int:
    from k4s.host import tokens

    with_client(kubeconfig, lambda client: tokens.delete(client, token_id.split(".")[0]))
    click.echo(f"deleted token {token_id.split('.')[0]}")
    return 0
