"""token: make, list and delete bootstrap tokens that let workers join (kubeadm token).

    k4s token create [--node NAME] [--segment FILE] [--ttl 1h] [--reusable | --control-plane] [--server URL]
                     [--kubeconfig out/kubeconfig]
    k4s token list | delete ID

`create` makes a single-use token (deleted by the server once a node has joined with it),
bound to one node name with --node, and prints a worker's join like `kubeadm token create
--print-join-command`: the server, the cluster CA's hash (the worker checks the CA against it
before it trusts anything) and the token. The token is a secret and never goes on a command
line (every pod can read /proc/cmdline): with --segment FILE it is written into FILE, the
machine's own initrd segment (0600; `k4s vm --join-secret FILE`), and only the public half is
printed. Run on the operator's host; it reaches the cluster through the apiserver.

With --control-plane it prints a server's join instead (kubeadm's `join --control-plane
--certificate-key`): role server, and a certificate key beside the token, with which a running
server seals the cluster's shared CA keys for the joining one (k4s.cluster.copycerts). Both are
secrets: give them to the machine in its join segment.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

DESCRIPTION = "k4s worker join"
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


@cli.command(help="Make a single-use token and print (or write) the worker's join.")
@click.option("--node", "node_name", default="", help="Bind the token to this node name (the only one it may join as).")
@click.option("--segment", type=click.Path(path_type=Path), default=None,
              help="Write the join, token included, as the machine's initrd segment (0600) and print only "
                   "the public half.")
@click.option("--ttl", default="1h", show_default=True, help="How long the token lives (e.g. 30m, 24h; at most 7d).")
@click.option("--reusable", is_flag=True, help="Many machines may join with it until it expires (TTL at most 24h).")
@click.option("--control-plane", is_flag=True,
              help="A server's join (kubeadm join --control-plane): the token and a certificate key that opens "
                   "the cluster's shared CA keys, which a server seals for it (TTL at most 2h).")
@click.option("--server", default="", help="The apiserver URL workers use [default: the one cluster-info names].")
@click.option("--description", default=DESCRIPTION, show_default=True)
@KUBECONFIG
def create(node_name: str, segment: Path | None, ttl: str, reusable: bool, control_plane: bool, server: str,
           description: str, kubeconfig: Path) -> int:
    from k4s import config
    from k4s.cluster import joinsecret
    from k4s.cluster.pki import spki_hash_pem
    from k4s.errors import K4sError
    from k4s.fsutil import write_atomic
    from k4s.host import tokens

    if control_plane and reusable:
        raise K4sError("--control-plane and --reusable together", hint="a server's join is for one machine")
    lifetime = tokens.parse_ttl(ttl, reusable, control_plane)  # checked before anything is asked of the server
    if node_name:
        try:
            node_name = config.KEYS["node-name"].parse(node_name)
        except config.Invalid as e:
            raise K4sError(f"--node: {e}", hint=e.hint) from None
    if segment is not None and not segment.parent.is_dir():
        raise K4sError(f"--segment {segment}: no directory {segment.parent}", hint="write it into an existing directory")

    def make(client):  # type: ignore[no-untyped-def]
        published, ca = tokens.cluster_server_and_ca(client)
        key, private = "", None
        if control_plane:
            token_id, secret, private = tokens.create_control_plane(
                client, lifetime, "k4s control-plane join" if description == DESCRIPTION else description, node_name)
        else:
            token_id, secret = tokens.create(client, lifetime, description, node_name, reusable)
        # kubeadm's join retries until the controller-manager has signed cluster-info for the
        # token; a k4s worker refuses an unsigned one at once, so the token waits to be usable
        wait = min(tokens.SIGN_WAIT, lifetime.total_seconds())
        if not tokens.wait_signed(client, token_id, wait):
            click.echo(f"k4s token: cluster-info is not signed for {token_id} yet (is the controller-manager "
                       "running?): a machine may be refused until it is", err=True)
        if control_plane:
            try:
                tokens.check_leader_elected(client)
                key = tokens.wait_uploaded(client, token_id, private, wait) or ""
            finally:
                if not key:  # no join was handed out: its token must not outlive the command
                    with contextlib.suppress(K4sError, OSError):
                        tokens.delete(client, token_id)
            if not key:
                raise K4sError(f"no server sealed the shared keys for token {token_id} within {wait:.0f}s",
                               hint="a server's approver does it at its next round: is a server up?")
        role = "server" if control_plane else "agent"
        return (tokens.join_line(server or published, spki_hash_pem(ca), node_name, role),
                tokens.join_secret(server or published, f"{token_id}.{secret}", spki_hash_pem(ca), node_name, key))

    public, whole = with_client(kubeconfig, make)
    if segment is None:
        click.echo(whole)
        click.echo("k4s token: this line holds a secret: give it to the machine in its join segment "
                   "(--segment FILE), never on its command line", err=True)
        return 0
    try:
        write_atomic(segment, joinsecret.segment(whole), 0o600)
    except OSError as e:
        raise K4sError(f"cannot write {segment}: {e.strerror}", hint="choose a writable path") from None
    click.echo(public)
    return 0


@cli.command(name="list", help="List the bootstrap tokens (ids and expiry; never the secrets).")
@KUBECONFIG
def list_(kubeconfig: Path) -> int:
    from k4s.host import tokens

    listed = with_client(kubeconfig, tokens.listed)
    click.echo(f"{'ID':<8} {'EXPIRES':<22} {'NODE':<20} {'USES':<9} DESCRIPTION")
    for t in listed:
        click.echo(f"{t.id:<8} {t.expires:<22} {t.node or '(any)':<20} {'reusable' if t.reusable else 'used' if t.used_by else 'once':<9} "
                   f"{t.description}")
    return 0


@cli.command(help="Delete a token: workers not yet joined with it cannot join.")
@click.argument("token_id")
@KUBECONFIG
def delete(token_id: str, kubeconfig: Path) -> int:
    from k4s.host import tokens

    with_client(kubeconfig, lambda client: tokens.delete(client, token_id.split(".")[0]))
    click.echo(f"deleted token {token_id.split('.')[0]}")
    return 0
