"""``--pidfile PATH``: the daemon's pid, written once it runs (after -d has
detached) and removed when it exits, if the file still names it."""

from __future__ import annotations

import contextlib
import os


def write(path: str) -> None:
    """Atomically: a reader never sees a half-written pid."""
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        with os.fdopen(fd, "w") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        if pid == os.getpid():
            os.unlink(path)
