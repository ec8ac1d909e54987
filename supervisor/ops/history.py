"""What happened so far, for ``tuninetd status``: the last trigger, the
last command and its outcome, how many commands ran and failed."""

from __future__ import annotations

import time
from typing import Any

from tuninetd.supervisor import wording
from tuninetd.supervisor.events import CommandEnded, Event, Observer, Resumed, Triggered


class History(Observer):
    def __init__(self, command_timeout: float) -> None:
        self.command_timeout = command_timeout
        self.last_trigger: dict[str, Any] | None = None
        self.last_command: dict[str, Any] | None = None
        self.last_failure: dict[str, Any] | None = None
        self.counts = {"start": 0, "stop": 0}
        self.failed = 0

    def observe(self, event: Event) -> None:
        if isinstance(event, Triggered) and event.fired:
            self.last_trigger = {"sensor": event.sensor, "lines": list(event.lines),
                                 "at": time.time(), "mono": event.at}
        elif isinstance(event, CommandEnded):
            o = event.outcome
            self.counts[event.event] = self.counts.get(event.event, 0) + 1
            self.failed += not o.ok
            self.last_command = {"event": event.event,
                                 "result": wording.outcome(o, self.command_timeout),
                                 "ok": o.ok, "exit_code": o.exit_code, "signal": o.signal,
                                 "duration": o.duration, "at": time.time(),
                                 "mono": time.monotonic()}
            if not o.ok:
                self.last_failure = self.last_command
        elif isinstance(event, Resumed):
            ago = max(0.0, time.time() - event.since)
            self.last_trigger = {"sensor": event.sensor, "lines": list(event.lines),
                                 "at": event.since, "mono": time.monotonic() - ago}
