"""What an operator sees of the running daemon: the control socket (``tuninetd
status``), the systemd notify protocol, the Prometheus metrics.

The arbiter calls the hooks below from its loop (a trigger, a beat, a command
that ended, a worker restarted, readiness, shutdown) and ``tick`` after each
pass; everything here runs in that one thread and never blocks.
"""

from __future__ import annotations

import contextlib
import os
import selectors
import time
from typing import TYPE_CHECKING, Any

import psutil

from tuninetd.common import __version__, wire
from tuninetd.supervisor.config import Config
from tuninetd.supervisor.control import ControlServer
from tuninetd.supervisor.logs import log
from tuninetd.supervisor.notify import Notifier
from tuninetd.supervisor.serve import SetupError

if TYPE_CHECKING:
    from tuninetd.supervisor.arbiter import Arbiter
    from tuninetd.supervisor.metrics import Metrics

__all__ = ["Ops", "SetupError"]


def command_result(msg: wire.Message, timeout: float) -> tuple[str, bool]:
    """How a command ended, in words, and whether that was a success."""
    if msg.get("error"):
        return f"could not be run: {wire.clean_text(msg['error'], 120)}", False
    if msg.get("timeout"):
        return f"timed out after {timeout:g} s and was killed", False
    if msg.get("sig") is not None:
        return f"killed by signal {msg['sig']}", False
    rc = msg.get("rc")
    return f"exit status {rc}", rc == 0


class Ops:
    def __init__(self, cfg: Config, selector: selectors.BaseSelector) -> None:
        self.cfg = cfg
        self.selector = selector
        # Taken out of the environment before any worker is spawned.
        self.notifier = Notifier.from_environment()
        self.arbiter: Arbiter | None = None
        self.control: ControlServer | None = None
        self.metrics: Metrics | None = None
        self.started = time.monotonic()
        self.last_packet: float | None = None
        self.last_trigger: dict[str, Any] | None = None
        self.last_command: dict[str, Any] | None = None
        self.counts = {"start": 0, "stop": 0}
        self.failed = 0
        self.next_watchdog = 0.0
        self._cpu: dict[int, tuple[float, float, float]] = {}  # pid -> created, cpu, when

    # -- setup and teardown ----------------------------------------------------

    def open(self, arbiter: Arbiter) -> None:
        """Bind the control socket (and the metrics port): before any worker
        starts, so a second daemon on the same socket stops right here."""
        self.arbiter = arbiter
        self.control = ControlServer(self.cfg.control, self.selector, self.snapshot)
        if self.cfg.metrics is not None:
            from tuninetd.supervisor.metrics import Metrics

            host, port = self.cfg.metrics
            self.metrics = Metrics(host, port, self.selector, self.idle_seconds)
            bound = self.metrics.address
            log.info("Metrics on http://%s:%d/metrics",
                               f"[{bound[0]}]" if ":" in bound[0] else bound[0], bound[1])

    def close(self) -> None:
        if self.control is not None:
            self.control.close()
            self.control = None
        if self.metrics is not None:
            self.metrics.close()
            self.metrics = None
        self.notifier.close()

    # -- hooks from the arbiter ------------------------------------------------

    def beat(self, role: str, packets: int, now: float) -> None:
        if packets > 0:
            self.last_packet = now
            if self.metrics is not None:
                self.metrics.packets.labels(role).inc(packets)

    def trigger(self, role: str, lines: list[str], now: float, fired: bool) -> None:
        self.last_packet = now
        if self.metrics is not None:
            self.metrics.packets.labels(role).inc()
        if fired:
            self.last_trigger = {"sensor": role, "lines": lines, "at": time.time(), "mono": now}

    def command_done(self, event: str, msg: wire.Message) -> None:
        result, ok = command_result(msg, self.cfg.command_timeout)
        duration = float(msg.get("dur") or 0.0)
        self._ran(event, result, ok, duration, msg.get("rc"), msg.get("sig"))

    def command_lost(self, event: str) -> None:
        self._ran(event, "the executor died while it ran", False, None, None, None)

    def _ran(self, event: str, result: str, ok: bool, duration: float | None,
             rc: int | None, sig: int | None) -> None:
        self.counts[event] = self.counts.get(event, 0) + 1
        self.failed += not ok
        self.last_command = {"event": event, "result": result, "ok": ok, "exit_code": rc,
                             "signal": sig, "duration": duration, "at": time.time(),
                             "mono": time.monotonic()}
        if self.metrics is not None:
            (self.metrics.starts if event == "start" else self.metrics.stops).inc()
            if not ok:
                self.metrics.failures.labels(event).inc()
            if duration is not None:
                self.metrics.duration.labels(event).observe(duration)

    def worker_restarted(self, role: str, reason: str) -> None:
        if self.metrics is not None:
            self.metrics.restarts.labels(role, reason).inc()

    def ready(self) -> None:
        self.notifier.ready(self.status_line())
        self.next_watchdog = 0.0

    def stopping(self) -> None:
        self.notifier.stopping(self.status_line())

    def tick(self, now: float) -> None:
        """After every pass of the loop: drop expired clients, follow the state."""
        for server in (self.control, self.metrics):
            if server is not None:
                server.expire(now)
        state = self.state()
        if self.metrics is not None:
            self.metrics.set_state(state)
        if self.notifier.enabled and state not in ("starting", "stopping"):
            self.notifier.set_status(self.status_line())
            if (self.notifier.watchdog_interval is not None and now >= self.next_watchdog
                    and self.healthy(now)):
                self.notifier.watchdog()
                self.next_watchdog = now + self.cfg.beat

    def deadline(self) -> float | None:
        """The next client deadline, for the loop's select timeout."""
        times = [t for s in (self.control, self.metrics) if s is not None
                 if (t := s.deadline()) is not None]
        return min(times, default=None)

    # -- the state, as seen from outside ---------------------------------------

    def state(self) -> str:
        a = self.arbiter
        if a is None or a.starting:
            return "starting"
        if a.stopping:
            return "stopping"
        return "up" if a.machine.up else "down"

    def healthy(self, now: float) -> bool:
        a = self.arbiter
        return a is not None and all(
            w.alive and w.ready and not w.silent(now, self.cfg.beat) for w in a.workers
        )

    def status_line(self) -> str:
        a = self.arbiter
        state = self.state()
        if state == "up" and self.last_trigger is not None:
            text = f"up (started by {self.last_trigger['sensor']})"
        elif state == "down":
            text = "down (standby, waiting for traffic)"
        else:
            text = state
        if a is not None and state in ("up", "down"):
            troubled = [w.title for w in a.workers if not (w.alive and w.ready)]
            troubled += [f"{w.title}: {w.mode}" for w in a.workers
                         if w.alive and w.ready and w.mode not in ("armed", "counting", "idle",
                                                                     "running")]
            if troubled:
                text += "; not well: " + ", ".join(troubled)
        return text

    def idle_seconds(self) -> float | None:
        if self.last_packet is None:
            return None
        return max(0.0, time.monotonic() - self.last_packet)

    def snapshot(self) -> dict[str, Any]:
        """The answer to ``{"cmd": "status"}``."""
        a = self.arbiter
        assert a is not None
        now = time.monotonic()
        idle = self.idle_seconds()
        trigger = None
        if self.last_trigger is not None:
            t = self.last_trigger
            trigger = {"sensor": t["sensor"], "lines": t["lines"], "time": t["at"],
                       "seconds_ago": round(now - t["mono"], 3)}
        last = None
        if self.last_command is not None:
            last = {k: v for k, v in self.last_command.items() if k != "mono"}
            last["time"] = last.pop("at")
            last["seconds_ago"] = round(now - self.last_command["mono"], 3)
        running = a.queue.running
        return {
            "version": __version__,
            "pid": os.getpid(),
            "state": self.state(),
            "ttl": self.cfg.ttl,
            "idle_seconds": None if idle is None else round(idle, 3),
            "last_trigger": trigger,
            "commands": {
                "starts": self.counts.get("start", 0),
                "stops": self.counts.get("stop", 0),
                "failed": self.failed,
                "running": running.event if running is not None else None,
                "pending": [job.event for job in a.queue.pending],
                "last": last,
            },
            "processes": self._processes(a, now),
        }

    def _processes(self, a: Arbiter, now: float) -> list[dict[str, Any]]:
        """One row per process. CPU % and RSS are measured here, in the
        supervisor: it runs as root and sees every worker whatever its user."""
        title = a.title.current.removeprefix(a.title.prefix).strip()
        rows = [self._row("supervisor", os.getpid(), title or self.state(), 0,
                          now - self.started)]
        for w in a.workers:
            rows.append(self._row(w.role, w.pid, w.mode, w.restarts,
                                  now - w.started if w.alive else None))
        running = a.queue.running
        if a.command_pid and running is not None:
            rows.append(self._row("command", a.command_pid, running.event, 0, None))
        alive = {row["pid"] for row in rows}
        for pid in [p for p in self._cpu if p not in alive]:
            del self._cpu[pid]
        return rows

    def _row(self, role: str, pid: int, state: str, restarts: int,
             uptime: float | None) -> dict[str, Any]:
        row: dict[str, Any] = {"role": role, "pid": pid or None, "user": None, "state": state,
                               "uptime_seconds": None if uptime is None else round(uptime, 3),
                               "restarts": restarts, "cpu_percent": None, "rss_bytes": None}
        if not pid:
            return row
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            with proc.oneshot():
                row["user"] = proc.username()
                row["rss_bytes"] = proc.memory_info().rss
                times = proc.cpu_times()
                created = proc.create_time()
            if uptime is None:
                row["uptime_seconds"] = round(max(0.0, time.time() - created), 3)
            row["cpu_percent"] = self._cpu_percent(pid, times.user + times.system, created)
        return row

    def _cpu_percent(self, pid: int, cpu: float, created: float) -> float:
        """Since the previous status request (like top between two refreshes);
        the first time, since the process started (like ps)."""
        now = time.monotonic()
        before = self._cpu.get(pid)
        self._cpu[pid] = (created, cpu, now)
        if before is not None and before[0] == created and now - before[2] > 0.05:
            used, elapsed = cpu - before[1], now - before[2]
        else:
            used, elapsed = cpu, time.time() - created
        return round(100.0 * max(0.0, used) / elapsed, 1) if elapsed > 0 else 0.0
