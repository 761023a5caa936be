"""Bootstrap tokens, as `kubeadm token` makes them: a Secret `bootstrap-token-<id>` in
kube-system that the apiserver authenticates as system:bootstrap:<id> (group
system:bootstrappers), and for which the controller-manager signs cluster-info. It
expires (the tokencleaner deletes it) and can only read cluster-info and ask for a
node certificate: a worker's only secret.

k4s's tokens are single-use by default: the server's approver deletes one once the CSR made
with it is approved (k4s.cluster.approver). One may be bound to one node name, and
`--reusable` (for many machines at once) is an explicit opt-in with a TTL of at most a day.

Made from the operator's host through the apiserver: the appliance has no shell.
"""

from __future__ import annotations

import base64
import datetime as dt
import secrets
import string
import time
from dataclasses import dataclass
from typing import Any

from k4s.cluster import addons, copycerts, kubeapi
from k4s.cluster.approver import (
    NODE_ANNOTATION,
    REUSABLE_ANNOTATION,
    TOKEN_SECRETS,
    TOKEN_TYPE,
    TOKENS_LIST,
    USED_BY_ANNOTATION,
)
from k4s.cluster.certs import CONTROL_PLANE_GROUP
from k4s.cluster.components.apiserver import CLUSTER_INFO_PATH
from k4s.errors import K4sError

NAMESPACE = "kube-system"
SECRETS = TOKEN_SECRETS  # kube-system: where bootstrap tokens live
TYPE = TOKEN_TYPE
EXTRA_GROUP = "system:bootstrappers:k4s:worker"
ALPHABET = string.ascii_lowercase + string.digits
MAX_TTL = dt.timedelta(days=7)
MAX_REUSABLE_TTL = dt.timedelta(hours=24)
MAX_CONTROL_PLANE_TTL = dt.timedelta(hours=2)  # kubeadm's kubeadm-certs live 2 hours
CONTROLLERS_LEASE = f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/kube-controller-manager"


@dataclass(frozen=True)
class TokenInfo:
    id: str
    expires: str
    description: str
    node: str = ""
    reusable: bool = False
    used_by: str = ""  # the request a single-use token joined; the server deletes it soon after


def new_token() -> tuple[str, str]:
    """(id, secret): 6 and 16 characters of [a-z0-9], from the OS's CSPRNG."""
    return ("".join(secrets.choice(ALPHABET) for _ in range(6)),
            "".join(secrets.choice(ALPHABET) for _ in range(16)))


def parse_ttl(text: str, reusable: bool = False, control_plane: bool = False) -> dt.timedelta:
    """kubeadm's --ttl: 30m, 24h, 1h30m, 45s (0 is refused: a worker's token must expire); at
    most MAX_TTL, or MAX_REUSABLE_TTL for a reusable token, MAX_CONTROL_PLANE_TTL for a server's."""
    import re

    m = re.fullmatch(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?", text.strip())
    if not text.strip() or not m:
        raise K4sError(f"--ttl {text!r} is not a duration", hint="write it like 24h, 30m or 1h30m")
    h, mi, s = (int(x or 0) for x in m.groups())
    ttl = dt.timedelta(hours=h, minutes=mi, seconds=s)
    if ttl <= dt.timedelta(0):
        raise K4sError("--ttl must be positive", hint="a token that never expires is a standing secret; use e.g. 1h")
    cap = MAX_CONTROL_PLANE_TTL if control_plane else MAX_REUSABLE_TTL if reusable else MAX_TTL
    if ttl > cap:
        raise K4sError(f"--ttl {text} is longer than {cap.days * 24 or cap.seconds // 3600}h"
                       f"{' for a reusable token' if reusable else ' for a server join' if control_plane else ''}",
                       hint="a join secret is short-lived; make a new one when a machine needs it")
    return ttl


def secret_for(token_id: str, token_secret: str, ttl: dt.timedelta, description: str,
               now: dt.datetime | None = None, node_name: str = "", reusable: bool = False,
               group: str = EXTRA_GROUP) -> dict:
    expires = (now or dt.datetime.now(dt.UTC)) + ttl
    data = {
        "token-id": token_id, "token-secret": token_secret,
        "expiration": expires.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "usage-bootstrap-authentication": "true", "usage-bootstrap-signing": "true",
        "auth-extra-groups": group, "description": description,
    }
    annotations = {**({NODE_ANNOTATION: node_name} if node_name else {}),
                   **({REUSABLE_ANNOTATION: "true"} if reusable else {})}
    return {"apiVersion": "v1", "kind": "Secret", "type": TYPE,
            "metadata": {"name": f"bootstrap-token-{token_id}", "namespace": NAMESPACE,
                         **({"annotations": annotations} if annotations else {})},
            "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}}


def create(client: kubeapi.Client, ttl: dt.timedelta, description: str, node_name: str = "",
           reusable: bool = False) -> tuple[str, str]:
    token_id, token_secret = new_token()
    client.json("POST", SECRETS, secret_for(token_id, token_secret, ttl, description, node_name=node_name,
                                            reusable=reusable))
    return token_id, token_secret


def create_control_plane(client: kubeapi.Client, ttl: dt.timedelta, description: str,
                         node_name: str = "") -> tuple[str, str, Any]:
    """A server's join (kubeadm's `token create --certificate-key`): a token in the control-plane
    group, and an upload request holding a one-time public key (k4s.cluster.copycerts). (token id,
    token secret, the request's private key)."""
    token_id, token_secret = new_token()
    made = client.json("POST", SECRETS, secret_for(token_id, token_secret, ttl, description, node_name=node_name,
                                                   group=CONTROL_PLANE_GROUP))
    private, public = copycerts.new_request_key()
    try:
        client.json("POST", SECRETS, copycerts.request(made, public))
    except (OSError, K4sError):
        delete(client, token_id)
        raise
    return token_id, token_secret, private


def check_leader_elected(client: kubeapi.Client) -> None:
    """A second server's controllers must take turns with the first's: refused when the cluster's
    controller-manager holds no Lease (the first server was not booted with cluster-init). Asked
    once cluster-info is signed for the token: the controllers run, so an elected one holds it."""
    holder = ((client.get_or_none(CONTROLLERS_LEASE) or {}).get("spec") or {}).get("holderIdentity")
    if not holder:
        raise K4sError("the cluster's controller-manager elects no leader: a joining server's would run beside "
                       "it, both active", hint="boot the first server with k4s.cluster-init=1 (as k3s's "
                       "--cluster-init) before another joins it")


def wait_uploaded(client: kubeapi.Client, token_id: str, private_key: Any, timeout: float) -> str | None:
    """The certificate key, once a server has sealed the shared files for this token and sealed the
    key to this request's public key; the request is deleted then. None at the timeout."""
    path = f"{SECRETS}/{copycerts.request_name(token_id)}"
    end = time.monotonic() + timeout
    while True:
        try:
            key = copycerts.unwrap_key(client.json("GET", path), private_key, token_id)
        except kubeapi.APIError as e:
            if e.status != 404:
                raise
            raise K4sError(f"the upload request for token {token_id} was refused (deleted unanswered)",
                           hint="see the server's `certs upload-refused` event for why") from None
        if key is not None:
            client.json("DELETE", path)
            return key
        if time.monotonic() >= end:
            return None
        time.sleep(1)


SIGN_WAIT = 60.0  # the controller-manager's bootstrapsigner signs a new token within seconds


def wait_signed(client: kubeapi.Client, token_id: str, timeout: float) -> bool:
    """Until cluster-info carries the token's signature (what a worker's discovery checks), for
    at most `timeout` seconds: a token handed out before it is signed would be refused."""
    end = time.monotonic() + timeout
    while True:
        data = client.json("GET", CLUSTER_INFO_PATH).get("data") or {}
        if f"jws-kubeconfig-{token_id}" in data:
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(1)


def listed(client: kubeapi.Client) -> list[TokenInfo]:
    items = client.json("GET", TOKENS_LIST)["items"]
    out = []
    for s in items:
        d = {k: base64.b64decode(v).decode(errors="replace") for k, v in (s.get("data") or {}).items()}
        notes = s.get("metadata", {}).get("annotations") or {}
        out.append(TokenInfo(d.get("token-id", "?"), d.get("expiration", "never"), d.get("description", ""),
                             notes.get(NODE_ANNOTATION, ""), notes.get(REUSABLE_ANNOTATION) == "true",
                             notes.get(USED_BY_ANNOTATION, "")))
    return out


def delete(client: kubeapi.Client, token_id: str) -> None:
    try:
        client.json("DELETE", f"{SECRETS}/bootstrap-token-{token_id}")
    except kubeapi.APIError as e:
        if e.status == 404:
            raise K4sError(f"no token {token_id}", hint="`k4s token list` shows them") from None
        raise


def cluster_server_and_ca(client: kubeapi.Client) -> tuple[str, bytes]:
    """The server address workers use and the CA, from cluster-info (what discovery reads)."""
    data = client.json("GET", CLUSTER_INFO_PATH)["data"]
    try:
        return addons.read_cluster_info(data["kubeconfig"])
    except (ValueError, KeyError, TypeError):
        raise K4sError("the server's cluster-info holds no CA", hint="is this a k4s or kubeadm server?") from None


def join_line(server: str, ca_hash: str, node_name: str = "", role: str = "agent") -> str:
    """The public half of a join: what a machine's command line may say."""
    return (f"k4s.role={role} k4s.server={server} k4s.ca-hash={ca_hash}"
            + (f" k4s.node-name={node_name}" if node_name else ""))


def join_secret(server: str, token: str, ca_hash: str, node_name: str = "", certificate_key: str = "") -> str:
    """A machine's whole join, secrets included: the text of its join segment (k4s.cluster.joinsecret).
    With a certificate key, a server's (role server: it joins the control plane)."""
    role = "server" if certificate_key else "agent"
    return (f"{join_line(server, ca_hash, node_name, role)} k4s.token={token}"
            + (f" k4s.certificate-key={certificate_key}" if certificate_key else ""))
