"""``--pidfile PATH``: the daemon's pid, written once it runs and removed
when it exits, if the file still names it.

It is written only when every worker has said hello, so every resource the
daemon holds alone (the control socket, the sensors' capture sockets and
NFLOG groups) is held by then: a second daemon that fails to start never
wrote it, and leaves the first one's in place.
"""

from __future__ import annotations

from tuninetd.common.pidfile import remove, write
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
