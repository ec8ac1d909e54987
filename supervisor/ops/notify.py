"""The systemd notify protocol (sd_notify(3)), spoken directly.

With ``NOTIFY_SOCKET`` set: ``READY=1`` once every worker has said hello,
``STATUS=`` when the state changes, ``WATCHDOG=1`` every beat while every
worker is healthy (when ``WATCHDOG_USEC`` is set for us), ``STOPPING=1`` on
shutdown. The variables are taken out of the environment so that neither the
workers nor the user's commands inherit them. Datagrams are sent without
blocking; one that cannot be sent is dropped (systemd is the one waiting).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

from tuninetd.common.wire import Mode
from tuninetd.supervisor.events import Event, Observer, Ready, Snapshot, Stopping

QUIET_MODES = frozenset({Mode.ARMED, Mode.COUNTING, Mode.IDLE, Mode.RUNNING})


class Notifier:
    def __init__(self, address: str | None, watchdog_usec: int | None) -> None:
        self.address = address
        self.watchdog_interval = watchdog_usec / 1e6 if watchdog_usec else None
        self.sock: socket.socket | None = None
        self.status = ""
        self.failed = False
        if address:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self.sock.setblocking(False)

    @classmethod
    def from_environment(cls) -> Notifier:
        raw = os.environ.pop("NOTIFY_SOCKET", None)
        usec_text = os.environ.pop("WATCHDOG_USEC", None)
        pid_text = os.environ.pop("WATCHDOG_PID", None)
        address = None
        if raw and (raw.startswith("/") or raw.startswith("@")):
            address = "\0" + raw[1:] if raw.startswith("@") else raw
        usec = None
        try:
            if usec_text and (not pid_text or int(pid_text) == os.getpid()):
                usec = int(usec_text)
        except ValueError:
            usec = None
        return cls(address, usec if usec and usec > 0 else None)

    @property
    def enabled(self) -> bool:
        return self.sock is not None

    def send(self, *fields: str) -> bool:
        if self.sock is None or self.address is None:
            return False
        try:
            self.sock.sendto("\n".join(fields).encode(), self.address)
        except OSError:
            self.failed = True
            return False
        return True

    def ready(self, status: str) -> None:
        self.status = status
        self.send("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")

    def set_status(self, status: str) -> None:
        if status != self.status:
            self.status = status
            self.send(f"STATUS={status}")

    def watchdog(self) -> None:
        if self.watchdog_interval is not None:
            self.send("WATCHDOG=1")

    def stopping(self, status: str) -> None:
        self.status = status
        self.send("STOPPING=1", f"STATUS={status}")

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def status_line(snap: Snapshot) -> str:
    """``STATUS=``: the state, and any worker that is not well."""
    if snap.state == "up" and snap.trigger_sensor:
        text = f"up (started by {snap.trigger_sensor})"
    elif snap.state == "down":
        text = "down (standby, waiting for traffic)"
    else:
        text = snap.state
    if snap.state in ("up", "down"):
        troubled = [w.log_name for w in snap.workers if not (w.alive and w.ready)]
        troubled += [f"{w.log_name}: {w.mode.value}" for w in snap.workers
                     if w.alive and w.ready and w.mode not in QUIET_MODES]
        if troubled:
            text += "; not well: " + ", ".join(troubled)
    return text


class SystemdNotify(Observer):
    """Tells systemd about readiness, the state and shutdown, and pets the
    watchdog every beat while every worker is healthy."""

    def __init__(self, notifier: Notifier, view: Callable[[], Snapshot], beat: float) -> None:
        self.notifier = notifier
        self.view = view
        self.beat = beat
        self.next_watchdog = 0.0
        self.watching = False  # between ready and stopping

    def observe(self, event: Event) -> None:
        if isinstance(event, Ready):
            self.notifier.ready(status_line(self.view()))
            self.next_watchdog = 0.0
            self.watching = self.notifier.watchdog_interval is not None
        elif isinstance(event, Stopping):
            self.watching = False
            self.notifier.stopping(status_line(self.view()))

    def tick(self, now: float) -> None:
        if not self.notifier.enabled:
            return
        snap = self.view()
        if snap.state in ("starting", "stopping"):
            return
        self.notifier.set_status(status_line(snap))
        if self.notifier.watchdog_interval is not None and now >= self.next_watchdog:
            # Not fed while a worker is unwell; looked at again a beat later.
            if all(w.alive and w.ready and not w.silent for w in snap.workers):
                self.notifier.watchdog()
            self.next_watchdog = now + self.beat

    def deadline(self) -> float | None:
        """Systemd's watchdog wakes us every beat; nothing else here does."""
        return self.next_watchdog if self.watching and self.notifier.enabled else None

    def close(self) -> None:
        self.notifier.close()
