"""``--pidfile PATH``: the daemon's pid, written once it runs and removed
when it exits, if the file still names it.

It is written only when every worker has said hello, so every resource the
daemon holds alone (the control socket, the sensors' capture sockets and
NFLOG groups) is held by then: a second daemon that fails to start never
wrote it, and leaves the first one's in place.
"""

from __future__ import annotations

import contextlib
import os

from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import Event, Observer, Ready


class PidFile(Observer):
    def __init__(self, path: str) -> None:
        self.path = path

    def observe(self, event: Event) -> None:
        if isinstance(event, Ready):
            try:
                write(self.path)
            except OSError as exc:
                raise StartupError(f"cannot write the pidfile {self.path}: "
                                   f"{exc.strerror or exc}") from None

    def close(self) -> None:
        remove(self.path)


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
