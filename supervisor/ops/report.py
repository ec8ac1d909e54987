"""The answer to a status request on the control socket: the daemon's
snapshot and history, and one row per process with its CPU and memory,
measured here in the supervisor (root, so it sees every worker whatever
its user)."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

from tuninetd.common import __version__
from tuninetd.supervisor import wording
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.events import Snapshot
from tuninetd.supervisor.ops.history import History


class StatusReport:
    def __init__(self, name: str, view: Callable[[], Snapshot], history: History,
                 cfg: Settings) -> None:
        self.name = name
        # What starts and what keeps the state up: the configuration's, fixed.
        self.start = {"packets": cfg.start_packets, "window_seconds": cfg.start_span,
                      "text": wording.start_threshold(cfg)}
        self.keep_alive = {s.label: wording.keep_alive(s, cfg) for s in cfg.sensors}
        self.view = view
        self.history = history
        self.started = time.monotonic()
        self._cpu: dict[int, tuple[float, float, float]] = {}  # pid -> created, cpu, when

    def record(self) -> dict[str, Any]:
        snap = self.view()
        h = self.history
        now = time.monotonic()
        trigger = None
        if h.last_trigger is not None:
            t = h.last_trigger
            trigger = {"sensor": t["sensor"], "lines": t["lines"], "time": t["at"],
                       "seconds_ago": round(now - t["mono"], 3)}
        last, failure = (self._command(c, now) for c in (h.last_command, h.last_failure))
        return {
            "name": self.name,
            "pid": os.getpid(),
            "version": __version__,
            "state": snap.state,
            "ttl": snap.ttl,
            "start": self.start,
            "keep_alive": self.keep_alive,
            "idle_seconds": None if snap.idle is None else round(snap.idle, 3),
            "last_trigger": trigger,
            "commands": {
                "starts": h.counts.get("start", 0),
                "stops": h.counts.get("stop", 0),
                "failed": h.failed,
                "running": snap.running,
                "pending": list(snap.pending),
                "last": last,
                "last_failure": failure,
            },
            "hold": None if snap.hold is None else {
                "queue": snap.hold.queue,
                "state": snap.hold.state,
                "held": snap.hold.held,
                "released": snap.hold.released,
                "overflowed": snap.hold.overflowed,
            },
            "processes": self._processes(snap, now),
        }

    @staticmethod
    def _command(command: dict[str, Any] | None, now: float) -> dict[str, Any] | None:
        if command is None:
            return None
        shown = {k: v for k, v in command.items() if k != "mono"}
        shown["time"] = shown.pop("at")
        shown["seconds_ago"] = round(now - command["mono"], 3)
        return shown

    def _processes(self, snap: Snapshot, now: float) -> list[dict[str, Any]]:
        rows = [self._row("supervisor", os.getpid(), snap.title or snap.state, 0,
                          now - self.started)]
        for w in snap.workers:
            rows.append(self._row(w.role, w.pid, w.mode.value, w.restarts, w.uptime))
            if w.last_exit:
                rows[-1]["last_exit"] = w.last_exit
        if snap.command_pid and snap.running is not None:
            rows.append(self._row("command", snap.command_pid, snap.running, 0, None))
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
        import psutil  # loaded by the first status request, not by every daemon

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
