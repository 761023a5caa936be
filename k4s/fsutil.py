"""File writes that are all-or-nothing: temp file, fsync, rename."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from k4s.errors import K4sError


def write_atomic(path: str | os.PathLike[str], data: bytes | str, mode: int = 0o644) -> bool:
    """Write data to path atomically with the given mode.

    Returns False (and leaves the file alone) when it already has exactly this
    content and mode, so idempotent callers do not churn mtimes.
    """
    p = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    try:
        st = p.stat()
        if (st.st_mode & 0o7777) == mode and p.read_bytes() == raw:
            return False
    except FileNotFoundError:
        pass
    except PermissionError as e:
        raise K4sError(f"cannot read {p}: {e.strerror}", hint="run as root or choose a writable --data-dir") from e
    except OSError as e:  # e.g. a parent is a file
        raise K4sError(f"cannot write {p}: {e.strerror}", hint="check the path: every parent must be a directory") from e
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.")
    except OSError as e:
        raise K4sError(f"cannot write {p}: {e.strerror}", hint="check the directory exists and is writable") from e
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if isinstance(e, OSError):  # e.g. the disk filled up: nothing half-written is left
            raise K4sError(f"cannot write {p}: {e.strerror}", hint="check free space and permissions") from e
        raise
    dfd = os.open(p.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    return True
