"""The up/down state machine and the queue of commands for the executor.

Pure logic with no clock of its own: the arbiter passes ``time.monotonic()``
values in, the tests pass whatever they like.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field


class Machine:
    """Down until a trigger; up until every sensor has been idle for ``ttl``.

    ``last_activity`` (None: no matching packet yet) moves on each trigger
    and each beat that counted packets, always to the supervisor's receive
    time, which is never before the packet: so stop never fires early, and at
    most one beat late. It is the daemon's one ttl clock. An up that no
    sensor reported (resumed from the state file, or ``tuninetd up``) starts
    that clock too, but only what the sensors reported is ``last_seen``, the
    idle time that status, metrics and the title show.
    """

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.up = False
        self.last_activity: float | None = None
        self.last_seen: float | None = None

    def _moved(self, now: float) -> float:
        return now if self.last_activity is None else max(self.last_activity, now)

    def trigger(self, now: float, seen: bool = True) -> bool:
        """A sensor saw its first packet (``seen``), or the state is brought
        up without one. True when this brings the state up."""
        self.last_activity = self._moved(now)
        if seen:
            self.last_seen = self.last_activity
        if self.up:
            return False
        self.up = True
        return True

    def activity(self, now: float, packets: int) -> None:
        """Packets counted; while down they only move the idle clock (the
        next trigger moves it again before any deadline is computed)."""
        if packets > 0:
            self.last_activity = self.last_seen = self._moved(now)

    def deadline(self) -> float | None:
        if not self.up or self.last_activity is None:
            return None
        return self.last_activity + self.ttl

    def expire(self, now: float) -> bool:
        """True when the ttl has run out now and the state goes down."""
        deadline = self.deadline()
        if deadline is not None and now >= deadline:
            self.up = False
            return True
        return False

    def force_down(self) -> bool:
        """SIGHUP. False when already down."""
        was_up, self.up = self.up, False
        return was_up

    def idle(self, now: float) -> float | None:
        """Seconds since the last matching packet a sensor reported; None:
        none yet."""
        return None if self.last_seen is None else max(0.0, now - self.last_seen)


@dataclass(slots=True)
class Job:
    id: int  # 0 until handed over
    event: str  # "start" or "stop"
    env: dict[str, str] = field(default_factory=dict)
    sensor: str = ""  # for start: the sensor kind that fired ("pcap", "nflog")
    lines: list[str] = field(default_factory=list)  # for start: the trigger summary


class CommandQueue:
    """One command at a time, start and stop strictly alternating.

    A stop still waiting when a start comes in cancels out with it: the
    service is up and simply stays up. Likewise a start still waiting when
    the stop comes (the executor was busy all along): the service stays down.
    So at most one command ever waits.
    """

    def __init__(self) -> None:
        self.pending: deque[Job] = deque()
        self.running: Job | None = None
        self.last_event: str | None = None
        self.next_id = 1

    def push(
        self,
        event: str,
        env: dict[str, str] | None = None,
        sensor: str = "",
        lines: list[str] | None = None,
    ) -> Job | None:
        """Queue ``event``; returns the waiting job it cancelled out, if any."""
        if self.pending and self.pending[-1].event != event:
            self.last_event = event
            return self.pending.pop()
        if self.last_event == event:
            raise ValueError(f"two {event} commands in a row")
        self.last_event = event
        self.pending.append(Job(0, event, env or {}, sensor, lines or []))
        return None

    def take(self) -> Job | None:
        """The next job to hand to the executor, when it is free. Jobs are
        numbered as they are handed over, 1, 2, 3 ...: the executor waits
        in the cgroup of the next one."""
        if self.running is None and self.pending:
            self.running = self.pending.popleft()
            self.running.id = self.next_id
            self.next_id += 1
            return self.running
        return None

    def finish(self, job_id: int) -> Job | None:
        if self.running is not None and self.running.id == job_id:
            job, self.running = self.running, None
            return job
        return None

    def start_failed(self) -> None:
        """The start failed and the service is back in standby: a stop waiting
        for it has nothing to stop, and the next start may come."""
        if self.pending and self.pending[-1].event == "stop":
            self.pending.pop()
        self.last_event = "stop"

    def drop_pending(self) -> list[Job]:
        dropped = list(self.pending)
        self.pending.clear()
        return dropped
