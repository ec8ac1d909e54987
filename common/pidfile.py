"""A pidfile: the process's pid, written atomically, removed at exit only
if it still names the process. tuninetd's --pidfile and tuntapd's."""

from __future__ import annotations

import contextlib
import os


def write(path: str) -> None:
    """Atomically: a reader never sees a half-written pid. The temporary
    file has a name nobody can guess and is created with O_EXCL (mkstemp):
    whatever someone planted in the directory is never opened, and the
    pidfile is root's, whatever the directory lets others do."""
    import tempfile  # only with --pidfile: it brings random and shutil

    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", dir=os.path.dirname(path))
    try:
        with os.fdopen(fd, "w") as f:
            os.fchmod(f.fileno(), 0o644)
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def remove(path: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        with open(path) as f:
            pid = int(f.read().strip() or 0)
        if pid == os.getpid():
            os.unlink(path)
