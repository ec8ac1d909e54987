"""The supervisor's side of the sensors: each message, already checked
against the schema, is judged and turned into an event for the state
machine; orders (arm, count, report) go the other way.

Nothing a sensor says is trusted: its privileges are read from /proc, its
text is cleaned, its rate bounded (supervisor/allowance.py), and a trigger
brings facts, not text: each is checked (supervisor/facts.py) and the
supervisor words them (supervisor/wording.py). A sensor that breaks the
protocol raises ``Misbehaved``; the arbiter kills and replaces it.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from tuninetd.common import wire
from tuninetd.common.logs import log
from tuninetd.supervisor import facts, handover, wording
from tuninetd.supervisor.allowance import Allowance
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.facts import Facts

Mode = wire.Mode
CAPTURING = frozenset({Mode.ARMED, Mode.COUNTING})


class Misbehaved(Exception):
    """A worker broke the protocol; the message says how."""


@dataclass(frozen=True, slots=True)
class Hello:
    worker: Worker


@dataclass(frozen=True, slots=True)
class Beat:
    worker: Worker
    packets: int


@dataclass(frozen=True, slots=True)
class CheckedTrigger:
    """A sensor's ``trigger`` record, its facts checked and worded."""

    worker: Worker
    facts: Facts  # checked
    lines: tuple[str, ...]  # the summary, as logged, worded from the facts
    packet: bytes | None


SensorEvent = Hello | Beat | CheckedTrigger


@dataclass(slots=True)
class Standing:
    """One sensor process's record: where it is in the contract, and how
    much it has said."""

    allowance: Allowance
    contract: wire.Contract = field(default_factory=wire.Contract)


class SensorLink:
    def __init__(self, cfg: Settings, workers: list[Worker]) -> None:
        self.cfg = cfg
        self.workers = workers
        self.handover = handover.Handover()
        for w in workers:
            w.link = self
        self.standings: dict[int, Standing] = {}  # by pid: each process starts afresh

    def receive(self, w: Worker, msg: wire.Message, now: float,
                starting: bool) -> SensorEvent | None:
        kind = msg["t"]
        standing = self._standing(w, now)
        # A trigger is not charged: the contract allows one per arm ordered,
        # so the supervisor's own pace bounds them, however fast it flaps.
        if kind != "trigger":
            self._charge(standing, "messages", now)
        standing.contract.received(kind)
        if kind == "hello":
            return self._hello(w, starting)
        if kind == "beat":
            self._mode(w, standing, wire.mode_of(msg, wire.SENSOR_MODES), now)
            self.handover.offer(w)
            return Beat(w, msg["n"])
        if kind == "trigger":
            return self._trigger(w, msg)
        reason = w.last_error = wire.clean_text(msg["reason"])  # error
        if starting and not w.ready:
            raise StartupError(reason)
        log.error("CORE: %s: %s", w.log_name, reason)
        return None

    def lost(self, w: Worker) -> None:
        """A sensor's end ends nothing else: its replacement says hello anew."""
        self.standings.pop(w.pid, None)

    def _hello(self, w: Worker, starting: bool) -> Hello | None:
        wrong = w.privileges_left(self.cfg.sensor_user.uid, self.cfg.sensor_user.gid)
        if wrong and w.seccomp_killing():
            # Not privileged but dying: its exit, reaped next, is logged as
            # "killed by seccomp".
            return None
        if wrong:
            log.error("CORE: %s is still privileged (%s): killing it",
                      w.log_name, "; ".join(wrong))
            w.kill("still privileged after hello")
            if starting:
                raise StartupError(f"the {w.log_name} did not drop its privileges")
            return None
        w.ready = True
        w.mode = Mode.ARMED
        if w.restarts:
            log.info("CORE: %s is back (pid %d)", w.log_name, w.pid)
        return Hello(w)

    def _standing(self, w: Worker, now: float) -> Standing:
        standing = self.standings.get(w.pid)
        if standing is None:
            live = {x.pid for x in self.workers}
            self.standings = {pid: s for pid, s in self.standings.items() if pid in live}
            standing = self.standings[w.pid] = Standing(Allowance(self.cfg.beat, now))
        return standing

    @staticmethod
    def _charge(standing: Standing, what: str, now: float) -> None:
        exceeded = standing.allowance.charge(what, now)
        if exceeded:
            raise Misbehaved(exceeded)

    def _mode(self, w: Worker, standing: Standing, mode: Mode, now: float) -> None:
        """Log the way into and out of trouble (e.g. the interface is gone),
        once each, not every beat."""
        if mode not in CAPTURING and mode is not w.mode:
            self._charge(standing, "mode changes", now)
            log.warning("CORE: %s: %s", w.log_name, mode.value)
        elif mode in CAPTURING and w.mode not in CAPTURING:
            self._charge(standing, "mode changes", now)
            log.info("CORE: %s: capturing again", w.log_name)
        w.mode = mode

    def _trigger(self, w: Worker, msg: wire.Message) -> CheckedTrigger:
        try:
            packet = base64.b64decode(msg["pkt"], validate=True) if "pkt" in msg else None
        except (binascii.Error, ValueError):
            raise Misbehaved("trigger with a bad packet") from None
        if packet is not None and len(packet) > wire.SNAPLEN:
            raise Misbehaved("trigger with a bad packet")
        try:
            checked = facts.check(msg)
        except facts.Bad as exc:
            raise Misbehaved(f"trigger with a bad {exc}") from None
        w.mode = Mode.COUNTING
        return CheckedTrigger(w, checked, wording.summary(checked), packet)

    # -- orders ------------------------------------------------------------------

    def order(self, w: Worker, verb: str) -> None:
        """Send ``arm`` or ``count``; the title follows unless the sensor is
        in trouble, which only its own beat can end."""
        w.send(verb)
        standing = self.standings.get(w.pid)
        if standing is not None:
            standing.contract.ordered(verb)
        if w.mode in CAPTURING:
            w.mode = Mode.ARMED if verb == "arm" else Mode.COUNTING

    def order_all(self, verb: str, but: Worker | None = None) -> None:
        for w in self.workers:
            if w is not but and w.ready:
                self.order(w, verb)

    def behind(self, deadline: float) -> list[Worker]:
        """Counting sensors not heard from since ``deadline``."""
        return [w for w in self.workers
                if w.ready and w.mode is Mode.COUNTING and w.last_heard < deadline]
