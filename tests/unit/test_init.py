"""PID 1's own helpers that run on the host as well."""

from __future__ import annotations

import os
from pathlib import Path

from k4s.boot import init


def test_warming_a_binary_reads_it_to_its_end_in_a_thread(tmp_path: Path) -> None:
    """The kube multicall's pages are read into the page cache while PID 1 goes on: the read goes to
    the end (a writer into a pipe finishes only once all it wrote was read), and a missing file
    ends the thread quietly (the node reports it)."""
    fifo = tmp_path / "kube"
    os.mkfifo(fifo)
    t = init.warm(fifo)
    with open(fifo, "wb") as w:
        w.write(b"\x7fELF" * (1 << 20))  # 4 MiB: more than the pipe holds, so only a reader lets it finish
    t.join(10)
    assert not t.is_alive()
    missing = init.warm(tmp_path / "missing")
    missing.join(10)
    assert not missing.is_alive()
