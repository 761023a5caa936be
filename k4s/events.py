"""The events the host waits for and measures by, one name each.

The guest writes them (k4s.log: a console line and a JSON line on its second serial
port); k4s.host.vm waits for them, the bench reads the boot's critical path from them,
and the tests assert on them. An event is a (component, event) pair; a component's
name is a supervised service's name where one emits it (etcd, kube-apiserver, node).
Standard library only: PID 1 and stage 1 import this.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple


class Event(NamedTuple):
    component: str
    event: str

    def matches(self, e: Mapping[str, Any]) -> bool:
        return e.get("component") == self.component and e.get("event") == self.event

    def first(self, events: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The first of `events` that is this one, or None."""
        return next((e for e in events if self.matches(e)), None)

    def all(self, events: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
        return [e for e in events if self.matches(e)]


START, FATAL = "start", "fatal"  # PID 1 (init, stage1) records its start, and why it ends

# stage 1 (LinuxBoot / PXE): fetch, verify, kexec
STAGE1_START = Event("stage1", START)
STAGE1_FIRMWARE = Event("stage1", "firmware")            # firmware=uefi|bios, secure_boot=on|off, lockdown=
STAGE1_VERIFIED = Event("stage1", "verified")            # one artifact (file=, bytes=, seconds=)
STAGE1_PAYLOAD_VERIFIED = Event("stage1", "payload-verified")
STAGE1_JOIN = Event("stage1", "join")                    # found=, source=
STAGE1_HANDOFF = Event("stage1", "handoff")
STAGE1_MEASURED = Event("stage1", "measured")            # tpm=, pcr=, extended=, value=: before the kexec

# init (PID 1 of stage 2), in boot order
INIT_START = Event("init", START)                      # stage 0 checked and mounted the bundle
MOUNTS = Event("init", "mounts")
FIRMWARE = Event("init", "firmware")                     # as STAGE1_FIRMWARE, in stage 2
MODULES = Event("init", "modules")
PAYLOAD = Event("init", "payload")                       # the squashfs parts mounted
NETWORK = Event("init", "network")
DATA_FORMAT = Event("data", "format")
DATA_FORMATTED = Event("data", "formatted")
DATA_MOUNTED = Event("data", "mounted")
DATA_SEALED = Event("data", "sealed")                    # a blank disk became a LUKS2 volume, its key sealed
DATA_UNSEALED = Event("data", "unsealed")                # the TPM unsealed a sealed volume's key

# the node
CA = Event("pki", "ca")                                  # hash=: the cluster CA's pin
ETCD_START = Event("etcd", "start")
ETCD_READY = Event("etcd", "ready")
APISERVER_READYZ = Event("kube-apiserver", "readyz")    # pending=: the /readyz checks still failing
APISERVER_READY = Event("kube-apiserver", "ready")
NODE_RIGHTS = Event("node-rights", "applied")            # objects=, node=: the node's rights (and Node) while the apiserver starts
JOINED = Event("join", "joined")
CERTS_FETCHED = Event("join", "certs-fetched")           # a server that joins: the shared CA keys, opened
ETCD_LEARNER = Event("etcd", "learner-added")            # member=, members=: a server that joins
ETCD_PROMOTED = Event("etcd", "promoted")                # member=: a voting member now
ETCD_NO_QUORUM = Event("etcd", "no-quorum")              # unreachable=, members=: writes refused
ETCD_QUORUM = Event("etcd", "quorum")                    # a majority answers again
ETCD_RESTORED = Event("etcd", "restored")                # member=, bytes=: a server restored from a snapshot
APILB_SERVERS = Event("apilb", "servers")                # servers=: the apiservers a worker's balancer knows
NODE_READY = Event("node", "ready")                      # node=: its name
COREDNS_READY = Event("coredns", "ready")
STATS = Event("k4s", "stats")                            # memory, every minute
CONTAINERD_RUNTIME = Event("containerd", "runtime")      # pivot_root=
IMAGES_IMPORTED = Event("images", "imported")            # file=, images=
IMAGES_PRESENT = Event("images", "present")              # file=, images=: on the data disk already
SECRET_DELETED = Event("join", "secret-deleted")

# the boot's critical path as the bench reports it: (label, event)
TIMELINE = (("/init", INIT_START), ("mounts", MOUNTS), ("modules", MODULES), ("network", NETWORK),
            ("pki", ETCD_START), ("etcd ready", ETCD_READY), ("apiserver ready", APISERVER_READY),
            ("node Ready", NODE_READY), ("CoreDNS Ready", COREDNS_READY))
