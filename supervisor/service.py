"""Up or down: the state machine between the sensors' events and the
executor's queue.

A trigger brings the state up and queues start; ``ttl`` seconds without a
matching packet bring it down and queue stop, and the sensors are armed
again. SIGHUP and ``tuninetd down`` force the way down, ``tuninetd up`` the
way up.
"""

from __future__ import annotations

from collections.abc import Callable

from tuninetd.supervisor import wording
from tuninetd.supervisor.config import Settings
from tuninetd.supervisor.dump import PacketDump
from tuninetd.supervisor.events import Counted, Observers, Triggered
from tuninetd.supervisor.executor_link import ExecutorLink
from tuninetd.supervisor.sensor_link import Beat, Hello, SensorLink, Trigger
from tuninetd.supervisor.state import Machine

REPORT_WAIT = 0.5  # seconds past the ttl a counting sensor's report is awaited


class Service:
    def __init__(self, cfg: Settings, sensors: SensorLink, executor: ExecutorLink,
                 observers: Observers) -> None:
        self.cfg = cfg
        self.sensors = sensors
        self.executor = executor
        self.observers = observers
        self.machine = Machine(cfg.ttl)
        self.dump = PacketDump(cfg.pcap_file) if cfg.pcap_file else None
        self.trigger_sensor = ""  # the sensor that brought the state up last
        self.report_asked = 0.0  # the ttl deadline sensors were last asked to report on

    def from_sensor(self, event: Hello | Beat | Trigger, now: float) -> None:
        if isinstance(event, Hello):
            if self.machine.up:
                self.sensors.order(event.worker, "count")
        elif isinstance(event, Beat):
            self.machine.activity(now, event.packets)
            if event.packets > 0:
                self.observers.publish(Counted(event.worker.role, event.packets))
        else:
            self._trigger(event, now)

    def _trigger(self, t: Trigger, now: float) -> None:
        role = t.worker.role
        if not self.machine.trigger(now):
            self.observers.publish(Triggered(role, (), False, now))
            return  # another sensor fired first: this is only activity
        self.trigger_sensor = role
        self.observers.publish(Triggered(role, t.lines, True, now))
        env = wording.command_env("start", role, self.cfg.ttl, t.fields)
        self.executor.start(env, role.partition(":")[0], t.lines)
        self.executor.dispatch()  # first: the start latency is what users wait on
        self.sensors.order_all("count", but=t.worker)
        if t.packet is not None and self.dump is not None:
            self.dump.append(t.packet, t.link)

    def force_down(self, announce: Callable[[], None]) -> bool:
        """Stop now; ``announce`` logs why first. False: already down."""
        if not self.machine.force_down():
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
        self.machine.trigger(now)
        self.trigger_sensor = wording.CONTROL_SENSOR
        self.observers.publish(Triggered(wording.CONTROL_SENSOR, (), True, now))
        self.executor.start(wording.command_env("start", wording.CONTROL_SENSOR, self.cfg.ttl),
                            "core", ())
        self.executor.dispatch()
        self.sensors.order_all("count")
        return True

    def _go_down(self) -> None:
        self.executor.stop(wording.command_env("stop", self.trigger_sensor, self.cfg.ttl))
        self.sensors.order_all("arm")
        self.executor.dispatch()

    def manage(self, now: float) -> None:
        if self._stop_is_due(now) and self.machine.expire(now):
            self._go_down()

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
        deadline = self.machine.deadline()
        if deadline is None:
            return None
        # Past it, the sensors' reports wake us; this is the backstop.
        return deadline if deadline > now else deadline + REPORT_WAIT

    def log_configuration(self, now: float) -> None:
        wording.configuration(self.cfg, self.machine.up, self.machine.idle(now) or 0.0)

    def title(self, now: float) -> str:
        if self.machine.up:
            return f"up idle {int(self.machine.idle(now) or 0.0)}s"
        return "down"


