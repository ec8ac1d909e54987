"""Up or down: the state machine between the sensors' events and the
executor's queue.

A trigger brings the state up and queues start; ``ttl`` seconds without a
matching packet bring it down and queue stop, and the sensors are armed
again. SIGHUP and ``tuninetd down`` force the way down, ``tuninetd up`` the
way up. Each change is written to the state file, and a restarted daemon
resumes an up state from it: up is written once start has ended, "starting"
until then. With ``retry_start`` a failed start is standby again, the
sensors re-armed later; so is a start that could not be run at all.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from tuninetd.supervisor import wording
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.dump import PacketDump
from tuninetd.supervisor.events import CommandEnded, Counted, Observers, Resumed, Triggered
from tuninetd.supervisor.executor_link import ExecutorLink
from tuninetd.supervisor.hold import Hold
from tuninetd.supervisor.sensor_link import Beat, CheckedTrigger, Hello, SensorEvent, SensorLink
from tuninetd.supervisor.state import Machine
from tuninetd.supervisor.statefile import StateFile

REPORT_WAIT = 0.5  # seconds past the ttl a counting sensor's report is awaited


class Service:
    def __init__(self, cfg: Settings, sensors: SensorLink, executor: ExecutorLink,
                 observers: Observers, state_file: StateFile,
                 hold: Hold | None = None) -> None:
        self.cfg = cfg
        self.sensors = sensors
        self.executor = executor
        self.hold = hold
        self.observers = observers
        self.machine = Machine(cfg.ttl)
        self.dump = PacketDump(cfg.pcap_file) if cfg.pcap_file else None
        self.trigger_sensor = ""  # the sensor that brought the state up last
        self.trigger_lines: tuple[str, ...] = ()
        self.report_asked = 0.0  # the ttl deadline sensors were last asked to report on
        self.state_file = state_file
        self.start_open = False  # a start is queued or running: up is "starting"
        self.retry_at: float | None = None  # a start failed: sensors re-armed then

    def resume(self, now: float) -> None:
        """Before any worker runs: up, if the previous run was, with the ttl
        clock starting now and start not run again."""
        record = self.state_file.load()
        if record is None or record.state != "up":
            return
        self.machine.trigger(now, seen=False)
        self.trigger_sensor, self.trigger_lines = record.sensor, record.summary
        wording.resumed(record.since)
        self.observers.publish(Resumed(record.sensor, record.summary, record.since))

    def _save(self) -> None:
        state = ("down" if not self.machine.up else "starting" if self.start_open else "up")
        self.state_file.save(state, self.trigger_sensor, self.trigger_lines)

    def _start(self, env: dict[str, str], sensor_kind: str, lines: tuple[str, ...],
               now: float) -> None:
        """The hold waits for a start that was queued; one that cancelled a
        stop still waiting leaves the service up as it was."""
        queued = self.executor.start(env, sensor_kind, lines)
        if queued:
            self.start_open = True
        if self.hold is not None:
            if queued:
                self.hold.start_queued(now)
            else:
                self.hold.up(now)

    def handle(self, event: SensorEvent | CommandEnded, now: float,
               exiting: bool = False) -> None:
        """What a link made of a worker's message (or of its end)."""
        if isinstance(event, CommandEnded):
            self.command_ended(event, now, exiting)
        elif isinstance(event, Hello):
            if self.machine.up:
                self.sensors.order(event.worker, "count")
        elif isinstance(event, Beat):
            self.machine.activity(now, event.packets)
            if event.packets > 0:
                self.observers.publish(Counted(event.worker.role, event.packets))
        else:
            self._trigger(event, now)

    def _trigger(self, t: CheckedTrigger, now: float) -> None:
        role = t.worker.role
        if self.retry_at is not None:  # standby after a failed start: activity only
            self.machine.activity(now, 1)
            self.observers.publish(Triggered(role, (), False, now))
            return
        if not self.machine.trigger(now):
            self.observers.publish(Triggered(role, (), False, now))
            return  # another sensor fired first: this is only activity
        self.trigger_sensor, self.trigger_lines = role, t.lines
        env = wording.command_env("start", role, self.cfg.ttl, t.facts)
        self._start(env, role.partition(":")[0], t.lines, now)
        # First: the start latency is what users wait on. The state file and
        # the observers (the log's lines among them) follow.
        self.executor.dispatch()
        # The executor, if woken on this CPU, goes first too.
        os.sched_yield()
        self._save()
        self.observers.publish(Triggered(role, t.lines, True, now))
        self.sensors.order_all("count", but=t.worker)
        if t.packet is not None and self.dump is not None:
            self.dump.append(t.packet, t.facts.link)

    def force_down(self, announce: Callable[[], None]) -> bool:
        """Stop now; ``announce`` logs why first. False: already down."""
        if not self.machine.up:
            wording.already_down()
            return False
        announce()
        self._go_down()
        return True

    def force_up(self, now: float) -> bool:
        """Start now, as a trigger would (the ttl clock starts). False:
        already up, and nothing changes."""
        if self.machine.up:
            return False
        # The queue first: if it refuses, nothing has changed yet.
        self._start(wording.command_env("start", wording.CONTROL_SENSOR, self.cfg.ttl),
                    "core", (), now)
        self.machine.trigger(now, seen=False)
        self.trigger_sensor, self.trigger_lines = wording.CONTROL_SENSOR, ()
        self.executor.dispatch()
        self._save()
        self.observers.publish(Triggered(wording.CONTROL_SENSOR, (), True, now))
        if self.hold is not None:
            self.hold.up(now)
        self.sensors.order_all("count")
        return True

    def _go_down(self, arm: bool = True) -> None:
        # The queue first: if it refuses the stop, nothing has changed yet.
        self.executor.stop(wording.command_env("stop", self.trigger_sensor, self.cfg.ttl))
        self.machine.force_down()
        self._save()
        if arm:
            self.sensors.order_all("arm")
        self.executor.dispatch()
        if self.hold is not None:
            self.hold.down()

    def exiting(self) -> None:
        """SIGTERM with stop_on_exit: stop, if up, before the executor quits."""
        if self.cfg.stop_on_exit and self.machine.up:
            wording.stop_on_exit()
            self._go_down(arm=False)

    def command_ended(self, ended: CommandEnded, now: float, exiting: bool = False) -> None:
        """A failed start with retry_start: standby again, without stop; the
        sensors are re-armed after retry_start seconds. Without retry_start
        the state stays up, as in the original (its warning is logged), but
        for a start that could not be run at all (no such file, Exec format
        error, permission denied): standby again too, re-armed after the ttl,
        when the original would have run start again. While the daemon
        exits, a failed start is saved as down, so that its next run runs
        start again. Either way the hold lets go of what waited for this
        start."""
        if ended.event != "start":
            return
        if self.hold is not None:
            self.hold.start_ended(ended.outcome.ok, now)
        self.start_open = False
        retry = self.cfg.retry_start
        if retry is None and ended.outcome.error:
            retry = float(self.cfg.ttl)
        if ended.outcome.ok or retry is None:
            self._save()
            return
        self.machine.force_down()
        if not exiting:
            self.executor.queue.start_failed()
            self.retry_at = now + retry
            wording.start_failed(retry)
        self._save()

    def exited(self) -> None:
        """An orderly exit: down leaves nothing to resume, so no file either."""
        if not self.machine.up:
            self.state_file.remove()

    def manage(self, now: float) -> None:
        if self.retry_at is not None and now >= self.retry_at:
            self.retry_at = None
            wording.retry_allowed()
            self.sensors.order_all("arm")
            if self.hold is not None:
                self.hold.down()
        if self._stop_is_due(now) and self.machine.expire(now):
            self._go_down()
        if self.hold is not None and (due := self.hold.deadline()) is not None and now >= due:
            self.hold.expire(now)

    def _stop_is_due(self, now: float) -> bool:
        """The ttl has run out, and every counting sensor has reported on the
        time up to then: a packet counted but not yet reported when the ttl
        ran out would make the stop early (and the re-arm start it again).
        Sensors are asked to report at once, so this costs milliseconds, not
        a beat; one that does not answer within REPORT_WAIT is not waited for
        (the silence check deals with it)."""
        deadline = self.machine.deadline()
        if deadline is None or now < deadline:
            return False
        behind = self.sensors.behind(deadline)
        if not behind or now >= deadline + REPORT_WAIT:
            return True
        if self.report_asked != deadline:
            self.report_asked = deadline
            for s in behind:
                s.send("report")
        return False

    def next_wakeup(self, now: float) -> float | None:
        held = self.hold.deadline() if self.hold is not None else None
        return min((t for t in (self._next_wakeup(now), held) if t is not None), default=None)

    def _next_wakeup(self, now: float) -> float | None:
        if self.retry_at is not None:
            return self.retry_at
        deadline = self.machine.deadline()
        if deadline is None:
            return None
        # Past it, the sensors' reports wake us; this is the backstop.
        return deadline if deadline > now else deadline + REPORT_WAIT

    def log_configuration(self, now: float) -> None:
        wording.configuration(self.cfg, self.machine.up, self.machine.idle(now) or 0.0,
                              self.hold.view() if self.hold is not None else None)

    def title(self, now: float) -> str:
        if self.machine.up:
            return f"up idle {int(self.machine.idle(now) or 0.0)}s"
        return "down"


