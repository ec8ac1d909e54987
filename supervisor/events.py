"""What the supervisor tells its observers (status, systemd, metrics).

The arbiter and its links publish these events, and ask for a tick after
each pass of the loop. When an observer needs the daemon's state, it asks
for a ``Snapshot``, a read-only copy. Observers never reach into the loop's
objects, and nothing they do feeds back into it.
"""

from __future__ import annotations

from dataclasses import dataclass

from tuninetd.common.wire import Mode


@dataclass(frozen=True, slots=True)
class Outcome:
    """How one command run ended, as the executor reported it."""

    error: str | None = None  # it could not be run at all
    timeout: bool = False
    signal: int | None = None
    exit_code: int | None = None
    duration: float | None = None
    lost: bool = False  # the executor died while it ran
    cgroup: bool = False  # killed (timeout) through its cgroup: nothing of it is left

    @property
    def ok(self) -> bool:
        return not (self.error or self.timeout or self.lost or self.signal is not None
                    or self.exit_code != 0)


@dataclass(frozen=True, slots=True)
class Triggered:
    """A sensor's first matching packet; ``fired``: it brought the state up."""

    sensor: str  # "pcap:eth0"
    lines: tuple[str, ...]
    fired: bool
    at: float  # monotonic


@dataclass(frozen=True, slots=True)
class Resumed:
    """The state of the previous run was up: it is resumed, start not run again."""

    sensor: str
    lines: tuple[str, ...]
    since: float  # time.time() when the previous run went up


@dataclass(frozen=True, slots=True)
class Counted:
    """Matching packets a sensor counted since its last beat."""

    sensor: str
    packets: int


@dataclass(frozen=True, slots=True)
class CommandEnded:
    event: str  # "start" or "stop"
    outcome: Outcome


@dataclass(frozen=True, slots=True)
class WorkerRestarted:
    role: str
    reason: str


@dataclass(frozen=True, slots=True)
class Released:
    """The hold let go of what it held (``verdict``: accept or drop)."""

    packets: int
    verdict: str
    waited: float  # seconds since the first of them was held
    overflowed: int  # packets that passed meanwhile, for want of buffer room


@dataclass(frozen=True, slots=True)
class Ready:
    """Every worker said hello: the daemon is running."""


@dataclass(frozen=True, slots=True)
class Stopping:
    """The daemon is shutting down."""


Event = (Triggered | Resumed | Counted | CommandEnded | Released | WorkerRestarted | Ready
         | Stopping)


@dataclass(frozen=True, slots=True)
class WorkerView:
    role: str
    log_name: str
    pid: int
    mode: Mode
    restarts: int
    uptime: float | None
    alive: bool
    ready: bool  # said hello and passed the checks
    silent: bool  # alive, but not heard from for too long
    last_exit: str  # how its previous process ended ("" before any did)


@dataclass(frozen=True, slots=True)
class HoldView:
    queue: int
    state: str  # "holding" (down: new connections wait) or "passing"
    held: int  # packets waiting now
    released: int  # packets let go so far (accepted or dropped)
    overflowed: int  # packets that passed unheld for want of buffer room


@dataclass(frozen=True, slots=True)
class Snapshot:
    """The daemon as seen from outside, at one moment."""

    state: str  # "starting", "down", "up" or "stopping"
    ttl: int
    idle: float | None  # seconds since the last matching packet; None: none yet
    trigger_sensor: str  # the sensor that brought the state up last
    title: str  # the supervisor's process title, after its prefix
    workers: tuple[WorkerView, ...]
    running: str | None  # the command being run: "start", "stop"
    pending: tuple[str, ...]
    command_pid: int
    hold: HoldView | None = None  # None: no --hold


class Observer:
    """Told every event; ticked after every pass of the loop. Each one
    overrides what it needs."""

    def observe(self, event: Event) -> None:
        pass

    def tick(self, now: float) -> None:
        pass

    def deadline(self) -> float | None:
        """When it next needs a tick (its clients' deadlines); None: never."""
        return None

    def close(self) -> None:
        pass


class Observers:
    """Everyone told about events, in the order they were added."""

    def __init__(self) -> None:
        self.observers: list[Observer] = []

    def add(self, observer: Observer) -> None:
        self.observers.append(observer)

    def publish(self, event: Event) -> None:
        for o in self.observers:
            o.observe(event)

    def tick(self, now: float) -> None:
        for o in self.observers:
            o.tick(now)

    def deadline(self) -> float | None:
        return min((t for o in self.observers if (t := o.deadline()) is not None), default=None)

    def close(self) -> None:
        for o in self.observers:
            o.close()
        self.observers.clear()
