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
from dataclasses import dataclass

from tuninetd.common import wire
from tuninetd.common.logs import log
from tuninetd.supervisor import facts, handover, wording
from tuninetd.supervisor.allowance import Allowance
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.facts import Facts
from tuninetd.supervisor.sandbox.privcheck import privileges_left, seccomp_killing

NORMAL_MODES = ("armed", "counting")


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
class Trigger:
    worker: Worker
    facts: Facts  # checked
    lines: tuple[str, ...]  # the summary, as logged, worded from the facts
    packet: bytes | None


SensorEvent = Hello | Beat | Trigger


class SensorLink:
    def __init__(self, cfg: Settings, workers: list[Worker]) -> None:
        self.cfg = cfg
        self.workers = workers
        self.handover = handover.Handover()
        self.allowances: dict[int, Allowance] = {}  # by pid: each process starts afresh

    def receive(self, w: Worker, msg: wire.Message, now: float,
                starting: bool) -> SensorEvent | None:
        kind = msg["t"]
        self._charge(w, "messages", now)
        if kind == "hello":
            return self._hello(w, starting)
        if not w.ready and kind != "error":
            raise Misbehaved(f"{kind} before hello")
        if kind == "beat":
            self._mode(w, wire.clean_text(msg.get("mode", ""), 40), now)
            self.handover.offer(w)
            return Beat(w, msg["n"])
        if kind == "trigger":
            return self._trigger(w, msg)
        self._charge(w, "errors", now)
        reason = w.last_error = wire.clean_text(msg["reason"])  # error
        if starting and not w.ready:
            raise StartupError(reason)
        log.error("CORE: %s: %s", w.log_name, reason)
        return None

    def _hello(self, w: Worker, starting: bool) -> Hello | None:
        if w.ready:
            raise Misbehaved("hello twice")
        wrong = privileges_left(w.pid, self.cfg.sensor_user.uid, self.cfg.sensor_user.gid,
                                w.config.get("jail"))
        if wrong and seccomp_killing(w.pid):
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
        w.mode = "armed"
        if w.restarts:
            log.info("CORE: %s is back (pid %d)", w.log_name, w.pid)
        return Hello(w)

    def _charge(self, w: Worker, what: str, now: float) -> None:
        allowance = self.allowances.get(w.pid)
        if allowance is None:
            live = {x.pid for x in self.workers}
            self.allowances = {pid: a for pid, a in self.allowances.items() if pid in live}
            allowance = self.allowances[w.pid] = Allowance(self.cfg.beat, now)
        exceeded = allowance.charge(what, now)
        if exceeded:
            raise Misbehaved(exceeded)

    def _mode(self, w: Worker, mode: str, now: float) -> None:
        """Log the way into and out of trouble (e.g. the interface is gone),
        once each, not every beat."""
        if mode not in NORMAL_MODES and mode != w.mode:
            self._charge(w, "mode changes", now)
            log.warning("CORE: %s: %s", w.log_name, mode)
        elif mode in NORMAL_MODES and w.mode not in NORMAL_MODES:
            self._charge(w, "mode changes", now)
            log.info("CORE: %s: capturing again", w.log_name)
        w.mode = mode

    def _trigger(self, w: Worker, msg: wire.Message) -> Trigger:
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
        w.mode = "counting"
        return Trigger(w, checked, wording.summary(checked), packet)

    # -- orders ------------------------------------------------------------------

    def order(self, w: Worker, verb: str) -> None:
        """Send ``arm`` or ``count``; the title follows unless the sensor is
        in trouble, which only its own beat can end."""
        w.send(verb)
        if w.mode in NORMAL_MODES:
            w.mode = "armed" if verb == "arm" else "counting"

    def order_all(self, verb: str, but: Worker | None = None) -> None:
        for w in self.workers:
            if w is not but and w.ready:
                self.order(w, verb)

    def behind(self, deadline: float) -> list[Worker]:
        """Counting sensors not heard from since ``deadline``."""
        return [w for w in self.workers
                if w.ready and w.mode == "counting" and w.last_heard < deadline]
