"""The supervisor's core without processes or root: the real ``Arbiter``,
``Service``, ``SensorLink`` and ``ExecutorLink``, driven by a test.

Each worker is a ``FakeWorker``: the real ``Worker`` whose process is not
started. Its channel is a real SOCK_SEQPACKET pair, of which the test holds
the worker's end (``say`` what the worker would send, ``orders`` for what the
supervisor sent it); a kill and a signal are recorded, and the test decides
when the process ends (``Core.exited``). The clock is the test's: ``Core.at``
moves it, and every pass of the loop (``Core.turn``) reads it. The state file
is written in the test's folder; nothing touches /run.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.configs import settings
from tuninetd.common import wire, worker
from tuninetd.supervisor.arbiter import Arbiter
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Account, SensorSpec
from tuninetd.supervisor.events import Event, Observer, Observers
from tuninetd.supervisor.executor_link import ExecutorLink
from tuninetd.supervisor.instance import Instance
from tuninetd.supervisor.sensor_link import SensorLink
from tuninetd.supervisor.service import Service
from tuninetd.supervisor.statefile import StateFile

# Past the kernel's highest pid_max (PID_MAX_LIMIT, 2**22): no process has these.
_PIDS = itertools.count(2**22 + 1)
EXITED = 0  # wait statuses: exited 0, killed by SIGKILL
KILLED = signal.SIGKILL


@dataclass(slots=True)
class FakeWorker(Worker):
    peer: socket.socket | None = None  # the worker's end of the channel
    killed: list[str] = field(default_factory=list)
    signals: list[int] = field(default_factory=list)
    privileged: list[str] = field(default_factory=list)  # what /proc would show

    def start_process(self, channel: socket.socket) -> int:
        if self.peer is not None:
            self.peer.close()
        self.peer = socket.socket(fileno=os.dup(channel.fileno()))
        self.peer.setblocking(False)
        return next(_PIDS)

    def signal(self, sig: int) -> None:
        self.signals.append(sig)
        if sig == signal.SIGKILL:
            self.killed.append(self.exit_reason)

    def privileges_left(self, uid: int, gid: int) -> list[str]:
        return list(self.privileged)

    def seccomp_killing(self) -> bool:
        return False

    def say(self, kind: str, /, **fields: Any) -> None:
        assert self.peer is not None
        wire.send(self.peer, kind, **fields)

    def say_raw(self, record: bytes) -> None:
        assert self.peer is not None
        self.peer.send(record)

    def orders(self) -> list[wire.Message]:
        """What the supervisor sent since the last call (config included)."""
        got: list[wire.Message] = []
        assert self.peer is not None
        while True:
            try:
                data = self.peer.recv(wire.MAX_MESSAGE)
            except BlockingIOError:
                return got
            if not data:
                return got
            got.append(wire.decode(data))

    def verbs(self) -> list[str]:
        return [m["t"] for m in self.orders()]


class Title(worker.Title):
    """The supervisor's ps title, kept here: the test's own stays as it is."""

    def set(self, state: str) -> None:
        self.current = f"{self.prefix} {state}" if state else self.prefix


class Recorder(Observer):
    def __init__(self) -> None:
        self.events: list[Event] = []

    def observe(self, event: Event) -> None:
        self.events.append(event)

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]


class Core:
    """One arbiter with ``sensors`` fake nflog sensors and a fake executor,
    started (every worker spawned) at time ``now``."""

    def __init__(self, folder: Path, sensors: int = 1, now: float = 1000.0,
                 **options: Any) -> None:
        self.now = now
        me = os.getuid(), os.getgid()
        # A long beat: the tests' jumps of the clock leave no worker silent
        # unless a test says so.
        options = {"command": "/bin/true", "ttl": 10, "beat": 5.0,
                   "name": f"core-{uuid.uuid4().hex[:8]}", **options}
        cfg = settings(sensors=tuple(SensorSpec("nflog", str(i), group=i)
                                     for i in range(1, sensors + 1)),
                       sensor_user=Account("sensor", *me), **options)
        self.cfg = cfg
        self.sensors = [FakeWorker(role=spec.label, module="fake", config={"kind": "nflog"},
                                   schema=wire.SENSOR_MESSAGES,
                                   log_name=f"sensor nflog {spec.name}")
                        for spec in cfg.sensors]
        self.executor = FakeWorker(role="executor", module="fake", config={},
                                   schema=wire.EXECUTOR_MESSAGES, log_name="executor")
        observers = Observers()
        self.seen = Recorder()
        observers.add(self.seen)
        assert cfg.name is not None
        self.arbiter = Arbiter(
            cfg, Instance(cfg.name, str(folder / "ctl.sock"), -1), observers,
            SensorLink(cfg, list(self.sensors)), ExecutorLink(cfg, self.executor, observers),
            StateFile(str(folder / f"{cfg.name}.state"), cfg), clock=lambda: self.now)
        self.arbiter.proctitle = Title(self.arbiter.proctitle.prefix, "tuninetd")
        self.arbiter.start()
        for w in (self.executor, *self.sensors):
            w.orders()  # the config record

    @property
    def service(self) -> Service:
        return self.arbiter.service

    def at(self, now: float) -> Core:
        self.now = now
        return self

    def turn(self) -> None:
        """One pass of the loop: every record waiting, then manage."""
        self.arbiter.turn(0)

    def ready(self) -> None:
        """Every worker says hello; the daemon is running."""
        self.executor.say("hello", pid=self.executor.pid)
        for s in self.sensors:
            s.say("hello", pid=s.pid)
        self.turn()
        assert not self.arbiter.starting
        for w in (self.executor, *self.sensors):
            w.orders()

    def exited(self, w: FakeWorker, status: int = KILLED) -> None:
        """``w``'s process is gone, as the reap finds it."""
        self.arbiter.exited(w, status)

    def trigger(self, s: FakeWorker, **facts: Any) -> None:
        s.say("trigger", **{"link": "raw", "ip": 4, "src": "192.0.2.1", "dst": "192.0.2.2",
                            "proto": 17, **facts})
        self.turn()

    def done(self, run: wire.Message, rc: int = 0) -> None:
        """The executor reports ``run`` finished with exit status ``rc``."""
        self.executor.say("done", id=run["id"], rc=rc, sig=None, dur=0.01, timeout=False)
        self.turn()

    def runs(self) -> list[wire.Message]:
        return [m for m in self.executor.orders() if m["t"] == "run"]
