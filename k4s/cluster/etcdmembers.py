"""etcd membership, as kubeadm's control-plane join changes it: through etcd's own cluster API
(the v3 JSON gateway on the client port, mutual TLS with the etcd CA), one change at a time.

    join: the members listed through any reachable one; this machine's stale entries (its name,
          or its peer address: a RAM-only server that lost power comes back empty) removed; it
          is added as a learner, which takes no part in quorum while it catches up; etcd then
          starts with --initial-cluster-state=existing and the list add answered.
    promote: once the learner has the leader's log (etcd refuses until then), it becomes a voting
          member (the etcd component's probe does it, k4s.cluster.components.etcd.ready).

etcd allows one learner at a time: a second server that joins meanwhile waits for the first's
promotion. What the join needs later (its member ID, the others' client URLs) is kept in a
record beside etcd's data directory. Each member also says when the cluster loses its majority,
and defragments itself on a schedule when its database file holds enough that no key uses (the
apiserver compacts old revisions every 5 minutes).
"""

from __future__ import annotations

import json
import random
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from k4s import events, log
from k4s.cluster import kubeapi
from k4s.errors import K4sError
from k4s.fsutil import write_atomic

CLIENT_PORT, PEER_PORT = 2379, 2380
RECORD = "etcd-join.json"  # under data-dir: the join's member ID and the other members' client URLs


@dataclass(frozen=True)
class Member:
    id: str
    name: str
    peer_urls: tuple[str, ...]
    client_urls: tuple[str, ...]
    learner: bool

    @classmethod
    def of(cls, m: dict[str, Any]) -> Member:
        return cls(str(m.get("ID", "")), m.get("name", ""), tuple(m.get("peerURLs") or ()),
                   tuple(m.get("clientURLs") or ()), bool(m.get("isLearner")))


def peer_url(ip: str) -> str:
    return f"https://{ip}:{PEER_PORT}"


def client_url(ip: str) -> str:
    return f"https://{ip}:{CLIENT_PORT}"


def call(endpoint: str, path: str, body: dict[str, Any], ctx: ssl.SSLContext, timeout: float = 10.0) -> dict[str, Any]:
    """POST to etcd's gateway; its JSON answer, or K4sError with etcd's message."""
    u = urllib.parse.urlsplit(endpoint)
    client = kubeapi.Client(u.hostname or "", u.port or CLIENT_PORT, ctx, timeout=timeout)
    status, data = client.request("POST", f"/v3/{path}", json.dumps(body).encode(), "application/json")
    try:
        answer = json.loads(data) if data else {}
    except ValueError:
        answer = {"message": data[:200].decode(errors="replace")}
    if status != 200:
        message = str(answer.get("message") or answer.get("error") or f"HTTP {status}")
        raise K4sError(f"etcd at {endpoint}: {path}: {message}", hint="see that server's etcd log")
    return answer


def members(endpoint: str, ctx: ssl.SSLContext, linearizable: bool = True) -> list[Member]:
    """The members; not linearizable: as this member last knew them, which it answers without a
    quorum."""
    listed = call(endpoint, "cluster/member/list", {"linearizable": linearizable}, ctx).get("members", [])
    return [Member.of(m) for m in listed]


def first_answer(endpoints: list[str], ctx: ssl.SSLContext) -> tuple[str, list[Member]]:
    """The members, from the first endpoint that answers with a quorum behind it."""
    errors = []
    for ep in endpoints:
        try:
            return ep, members(ep, ctx)
        except (OSError, K4sError) as e:
            errors.append(f"{ep}: {e.message if isinstance(e, K4sError) else e}")
    raise K4sError("no etcd member answered: " + "; ".join(errors),
                   hint="are the other servers up? etcd needs a majority of its members to change them")


def initial_cluster(all_members: list[Member], name: str, own_peer: str) -> str:
    """--initial-cluster for a member that joins: every member's peer URLs (etcd compares the
    set), under its name; the new one under ours, one not yet started under a placeholder."""
    parts = []
    for m in all_members:
        who = name if own_peer in m.peer_urls else (m.name or f"unstarted-{m.id}")
        parts += [f"{who}={u}" for u in m.peer_urls]
    return ",".join(parts)


def join(endpoints: list[str], ctx: ssl.SSLContext, name: str, ip: str, deadline: float = 300.0) -> dict[str, Any]:
    """Add this machine as a learner, after removing its stale entries; the record etcd's start
    and the promotion read: {member_id, initial_cluster, endpoints}."""
    own = peer_url(ip)
    end = time.monotonic() + deadline
    delay = 1.0
    while True:
        ep, listed = first_answer(endpoints, ctx)
        stale = [m for m in listed if m.name == name or own in m.peer_urls]
        try:
            for m in stale:  # one change at a time, each through a quorum
                call(ep, "cluster/member/remove", {"ID": m.id}, ctx)
                log.event("etcd", "member-removed", member=m.name or m.id, reason="this machine's old entry")
            added = call(ep, "cluster/member/add", {"peerURLs": [own], "isLearner": True}, ctx)
            break
        except K4sError as e:
            # one learner at a time; a remove that would leave no quorum is refused likewise
            if time.monotonic() + delay > end:
                raise
            log.event("etcd", "join-retry", level="warn", error=e.message, wait=f"{delay:.0f}s")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
    now = [Member.of(m) for m in added.get("members", [])]
    member_id = str(added["member"]["ID"])
    others = sorted({u for m in now if m.id != member_id for u in m.client_urls} | set(endpoints))
    log.event(*events.ETCD_LEARNER, member=name, id=member_id, members=len(now))
    return {"member_id": member_id, "initial_cluster": initial_cluster(now, name, own), "endpoints": others,
            "members": len(now)}


def write_record(data_dir: Path, record: dict[str, Any]) -> None:
    write_atomic(data_dir / RECORD, json.dumps(record, indent=1) + "\n", 0o600)


def read_record(data_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((data_dir / RECORD).read_text())
    except (OSError, ValueError):
        return None


def promote(record: dict[str, Any], ctx: ssl.SSLContext) -> bool:
    """Make the learner a voting member through another member; False while etcd refuses (the
    learner is not in sync yet), or when no member answers."""
    for ep in record.get("endpoints", []):
        try:
            call(ep, "cluster/member/promote", {"ID": record["member_id"]}, ctx)
        except K4sError as e:
            if "not a learner" in e.message:  # an earlier try did it, and its answer was lost
                return True
            log.event("etcd", "promote-waiting", level="debug", endpoint=ep, error=e.message)
            return False  # a member answered: the learner is not in sync yet
        except OSError:
            continue
        log.event(*events.ETCD_PROMOTED, id=record["member_id"], members=record.get("members", 0))
        return True
    return False


def quorum_line(voting: list[str], gone: list[str]) -> str | None:
    """What the console says when the voting members that answer are not a majority of them."""
    short = len(voting) // 2 + 1 - (len(voting) - len(gone))
    if short <= 0:
        return None
    back = "one returns" if short == 1 else f"{short} of them return"
    return (f"k4s: etcd: {len(gone)} of {len(voting)} members unreachable ({', '.join(gone)}): "
            f"writes refused until {back}")


class Quorum:
    """Tells the console when this member's cluster loses its quorum, and when it has it back: the
    etcd probe reports each answer (one probe at a time, so no lock)."""

    def __init__(self) -> None:
        self.lost = self.was_healthy = False

    def observe(self, endpoint: str, ctx: ssl.SSLContext, healthy: bool, timeout: float = 2.0) -> None:
        if not (healthy or self.was_healthy):
            return  # starting: the boot's probes ask nothing more
        self.was_healthy = True
        if healthy:
            if self.lost:
                self.lost = False
                log.console("k4s: etcd: a majority of members answers again: writes accepted")
                log.event(*events.ETCD_QUORUM)
            return
        try:
            voting = [m for m in members(endpoint, ctx, linearizable=False) if not m.learner]
        except (OSError, K4sError):
            return  # this member itself does not answer: its own failure, not the quorum's
        gone = [m.name or m.id for m in voting if not answers(m, ctx, timeout)]
        line = quorum_line([m.name or m.id for m in voting], gone)
        if line and not self.lost:
            self.lost = True
            log.console(line)
            log.event(*events.ETCD_NO_QUORUM, level="warn", unreachable=",".join(gone), members=len(voting))


def answers(m: Member, ctx: ssl.SSLContext, timeout: float) -> bool:
    for url in m.client_urls:
        try:
            call(url, "maintenance/status", {}, ctx, timeout=timeout)
            return True
        except (OSError, K4sError):
            continue
    return False


DEFRAG_EVERY = 3600.0  # seconds between looks, each member on its own clock (a tenth of jitter)
DEFRAG_MIN_FREE = 16 << 20  # bytes the database file holds for nothing before it is worth a pause


def defragment_if_worth(endpoint: str, ctx: ssl.SSLContext, min_free: int = DEFRAG_MIN_FREE) -> tuple[int, int] | None:
    """Defragment this member when its database file holds at least min_free bytes that no key
    uses (what deleted and compacted revisions left): on a RAM-only server that file is RAM.
    The member pauses its reads and writes meanwhile (milliseconds in RAM), so each member does
    its own, at its own time. (size before, after), or None when not worth it."""
    st = call(endpoint, "maintenance/status", {}, ctx)
    size = int(st.get("dbSize") or 0)
    used = int(st.get("dbSizeInUse") or size)
    if size - used < min_free:
        return None
    call(endpoint, "maintenance/defragment", {}, ctx, timeout=120)
    after = int(call(endpoint, "maintenance/status", {}, ctx).get("dbSize") or 0)
    log.event("etcd", "defragmented", before_mib=f"{size / 2**20:.1f}", after_mib=f"{after / 2**20:.1f}")
    return size, after


def defragment_on_schedule(endpoint: str, ctx: Callable[[], ssl.SSLContext], stop: threading.Event,
                           every: float = DEFRAG_EVERY) -> None:
    """Until stop: every `every` seconds (jittered), defragment_if_worth."""
    while not stop.wait(every * random.uniform(0.9, 1.1)):  # noqa: S311 - a schedule, not a secret
        try:
            defragment_if_worth(endpoint, ctx())
        except (OSError, K4sError, ValueError) as e:
            log.event("etcd", "defragment-failed", level="warn", error=str(e))


def status(endpoint: str, ctx: ssl.SSLContext) -> dict[str, Any]:
    """What `etcdctl member list` and `endpoint status` say, for `k4s status`: each member (name,
    learner or voting, the leader) as the member at `endpoint` sees them."""
    leader = str(call(endpoint, "maintenance/status", {}, ctx).get("leader", ""))
    return {"members": [{"name": m.name or f"unstarted-{m.id}", "learner": m.learner, "leader": m.id == leader}
                        for m in members(endpoint, ctx)]}
