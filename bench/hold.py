"""6. The hold (--hold): the first connection to an on-demand service, and
what the hold costs while the service is up.

Two namespaces of its own (tests/support/holdlab.py): the daemon's, with
iptables-nft rules that log each new TCP connection to an NFLOG group and
queue it (``-j NFQUEUE --queue-bypass``), and a client's. The start command
launches a real service and returns once it listens.

First connection: the client connects and times its first byte; the start
command's own duration (as the executor measured it) is taken off, so what
is left is what the hold and the daemon add after start ended. Then
``tuninetd down``, and the next cycle begins once stop has run. The same
cycles without --hold: the SYN passes (nobody on the queue: bypass) to a
port nothing listens on yet, and the connection is refused (or reset).

Cost while up: the daemon up (the queue passing), the supervisor's CPU
(schedstat) during a burst of new connections, against an idle window
just before; the difference per connection.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench.lab import Lab, _sched_ns
from bench.settings import Settings
from bench.timing import Summary
from tests.support import holdlab
from tests.support.netlab import Daemon, Netns, wait_for
from tuninetd.supervisor.ops.client import StatusError, query

IDLE_WINDOW = 2.0  # seconds; the burst of connections lasts as long at least


class Service:
    """The daemon (with or without --hold) in a fresh pair of namespaces."""

    def __init__(self, folder: Path, hold: bool, beat: float) -> None:
        folder.mkdir(exist_ok=True)
        self.ns = Netns()
        self.pair = holdlab.Pair(self.ns)
        holdlab.new_connections(self.ns)
        held = ["--hold", str(holdlab.QUEUE)] if hold else []
        self.daemon = Daemon(self.ns, ["-n", str(holdlab.GROUP), *held, "-c",
                                       str(holdlab.service_script(folder)), "-t", "3600",
                                       "--beat", str(beat)], folder / "daemon.log")
        self.starts = 0
        wait_for("the daemon answering", lambda: self._status(), timeout=20)
        self.wait_down()

    def _status(self) -> dict[str, Any] | None:
        if self.daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited:\n{self.daemon.text()}")
        try:
            return query(self.daemon.control)
        except StatusError:  # not answering yet: asked again
            return None

    def start_duration(self) -> float:
        """Once this cycle's start has ended: how long it ran (s)."""
        self.starts += 1

        def probe() -> float | None:
            s = self._status()
            if s is None or s["commands"]["starts"] < self.starts:
                return None
            return float(s["commands"]["last"]["duration"])

        return wait_for("start ended", probe)

    def wait_down(self) -> None:
        def probe() -> bool:
            s = self._status()
            return (s is not None and s["state"] == "down" and s["commands"]["running"] is None
                    and not s["commands"]["pending"])

        wait_for("down, nothing running", probe, timeout=20)

    def down(self) -> None:
        query(self.daemon.control, cmd="down")
        self.wait_down()

    def close(self) -> None:
        self.daemon.stop()
        self.pair.close()
        self.ns.delete()


def _first_connections(folder: Path, cfg: Settings, hold: bool) -> dict[str, Any]:
    service = Service(folder, hold, cfg.beat)
    try:
        after: list[float] = []
        lost = 0  # refused, or reset
        for _ in range(cfg.hold_cycles):
            try:
                took = holdlab.first_byte(service.pair.client)
            except (ConnectionRefusedError, ConnectionResetError):
                lost += 1
                service.start_duration()
            else:
                after.append((took - service.start_duration()) * 1000)
            service.down()
        out: dict[str, Any] = {"cycles": cfg.hold_cycles, "lost": lost}
        if after:
            out["after_start_ms"] = Summary(after).as_dict()
        return out
    finally:
        service.close()


def _cost_while_up(folder: Path, cfg: Settings) -> dict[str, Any]:
    service = Service(folder, True, cfg.beat)
    try:
        holdlab.first_byte(service.pair.client)
        service.start_duration()
        pid = service.daemon.pid
        time.sleep(2 * cfg.beat)  # past the trigger's bustle
        before = _sched_ns(pid)
        time.sleep(IDLE_WINDOW)
        idle_ns = _sched_ns(pid) - before
        began, before = time.monotonic(), _sched_ns(pid)
        connections = 0
        while connections < cfg.hold_connections or time.monotonic() - began < IDLE_WINDOW:
            holdlab.first_byte(service.pair.client)
            connections += 1
        busy_ns, busy_s = _sched_ns(pid) - before, time.monotonic() - began
        idle_rate = idle_ns / IDLE_WINDOW
        extra = max(0.0, busy_ns - idle_rate * busy_s)
        return {
            "connections": connections,
            "seconds": busy_s,
            "idle_ms_per_s": idle_rate / 1e6,
            "busy_ms_per_s": busy_ns / busy_s / 1e6,
            "per_connection_us": extra / connections / 1e3,
        }
    finally:
        service.close()


def measure(lab: Lab, cfg: Settings) -> dict[str, Any]:
    folder = lab.dir / "hold"
    out: dict[str, Any] = {"unit": "ms", "beat": cfg.beat}
    out["with_hold"] = _first_connections(folder, cfg, hold=True)
    out["without_hold"] = _first_connections(folder, cfg, hold=False)
    out["while_up"] = _cost_while_up(folder, cfg)
    held = out["with_hold"].get("after_start_ms")
    if held:
        cfg.progress(f"hold: first byte after start ended p50 {held['p50']:.1f} ms, "
                     f"p99 {held['p99']:.1f} ms; lost "
                     f"{out['with_hold']['lost']} of {cfg.hold_cycles}")
    cfg.progress(f"without hold: lost (refused or reset) {out['without_hold']['lost']} of "
                 f"{cfg.hold_cycles}")
    up = out["while_up"]
    cfg.progress(f"hold while up: supervisor {up['busy_ms_per_s']:.3f} ms/s during "
                 f"{up['connections']} connections, {up['idle_ms_per_s']:.3f} ms/s idle; "
                 f"{up['per_connection_us']:.2f} us per connection")
    return out
