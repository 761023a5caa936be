"""A machine's join secret: its own initrd segment, never its command line.

A kernel command line is public (every pod reads /proc/cmdline) and so is a served
payload. A worker's bootstrap token therefore reaches it as one more initrd segment, made
for that machine alone: a newc cpio holding one file, layout.JOIN_SECRET (0600), written
like a command line (`k4s.role=agent k4s.server=... k4s.ca-hash=... k4s.node-name=...
k4s.token=...`). The kernel unpacks it into the RAM root with the rest; init reads it as a
config layer (config.load's join_secret) and deletes it once the node has joined.

Who makes one: `k4s token create --segment FILE` (then `k4s vm --join-secret FILE`), `k4s
netboot serve --kubeconfig` for each machine that boots (PXE's boot.ipxe and stage 1 ask
for their own), and stage 1, which wraps what it fetched in exactly this one file.
"""

from __future__ import annotations

import stat
from pathlib import Path

from k4s import events, layout, log
from k4s.image import cpio


def segment(words: str) -> bytes:
    """The cpio segment (uncompressed; the kernel takes it as it is) for one machine."""
    return cpio.bytes_of([cpio.Entry(layout.member(layout.JOIN_SECRET), stat.S_IFREG | 0o600,
                                     (words.strip() + "\n").encode())])


# what a join that stage 1 hands on may set: the secret and the name it is bound to. The server
# and the CA pin come from the payload's signed command line, never from the network.
HANDED_ON = ("token", "node-name")


def words(text: str, allowed: tuple[str, ...] | None = None) -> str:
    """The join secret checked as init will read it: only join keys (or `allowed`), every value
    valid. The text back, or ConfigError (which never echoes the token)."""
    from k4s import config

    config.check_join_words(text, allowed or config.JOIN_KEYS)
    return text.strip()


def forget(source: str) -> None:
    """Delete the join secret a Config was loaded from (its source, "join secret PATH") once
    the node has joined: it is single-use, and RAM is the only place it ever was."""
    prefix = "join secret "
    if not source.startswith(prefix):
        return
    path = Path(source[len(prefix):])
    try:
        path.unlink()
        log.event(*events.SECRET_DELETED, path=path)
    except FileNotFoundError:
        pass
    except OSError as e:
        log.event("join", "secret-delete-failed", level="warn", path=path, error=e.strerror)
