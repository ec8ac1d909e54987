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
cycles without --hold, two ways: as they come, the SYN passes (nobody on
the queue: bypass) to a port nothing listens on yet, and the connection is
refused (or reset); or, the best an operator can do without the hold, with
a rule that drops SYNs while the service is down (start deletes it once
the service listens, stop adds it back): the client's retransmit, a second
later, is served.

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


# Without the hold: SYNs to the service dropped while it is down, after they
# are logged (rule 1) and before the queue's rule, whose bypass accepts.
DROP_SYN = f"INPUT -i srv0 -p tcp --dport {holdlab.TCP_PORT} --syn -j DROP"
DROP_AT = "INPUT 2"
WAYS = ("hold", "refused", "dropped")  # with --hold; without, as they come; without, dropped


class Service:
    """The daemon in a fresh pair of namespaces, one of WAYS."""

    def __init__(self, folder: Path, way: str, beat: float) -> None:
        folder.mkdir(exist_ok=True)
        self.ns = Netns()
        self.pair = holdlab.Pair(self.ns)
        holdlab.new_connections(self.ns)
        held = ["--hold", str(holdlab.QUEUE)] if way == "hold" else []
        script = holdlab.service_script(folder)
        if way == "dropped":
            add = f"-I {DROP_AT} {DROP_SYN.removeprefix('INPUT ')}"
            holdlab.iptables(self.ns, *add.split())
            script = holdlab.service_script(
                folder, start=f"{holdlab.serve(folder)}\n    iptables-nft -D {DROP_SYN}",
                stop=f"iptables-nft {add}")
        self.daemon = Daemon(self.ns, ["-n", str(holdlab.GROUP), *held, "-c", str(script),
                                       "-t", "3600", "--beat", str(beat)],
                             folder / "daemon.log")
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


def _first_connections(folder: Path, cfg: Settings, way: str) -> dict[str, Any]:
    service = Service(folder, way, cfg.beat)
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
            # Past the sensor's next quiet beat, which empties its queue: a
            # retransmitted SYN logged while up must not fire the next start.
            time.sleep(2 * cfg.beat)
            service.down()
        out: dict[str, Any] = {"cycles": cfg.hold_cycles, "lost": lost}
        if after:
            out["after_start_ms"] = Summary(after).as_dict()
        return out
    finally:
        service.close()


def _cost_while_up(folder: Path, cfg: Settings) -> dict[str, Any]:
    service = Service(folder, "hold", cfg.beat)
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
    for way, key in zip(WAYS, ("with_hold", "without_hold", "without_hold_dropped"),
                        strict=True):
        out[key] = run = _first_connections(folder, cfg, way)
        after = run.get("after_start_ms")
        cfg.progress(f"first connection, {way}: lost {run['lost']} of {run['cycles']}"
                     + (f"; first byte after start ended p50 {after['p50']:.1f} ms, "
                        f"p99 {after['p99']:.1f} ms" if after else ""))
    out["while_up"] = _cost_while_up(folder, cfg)
    up = out["while_up"]
    cfg.progress(f"hold while up: supervisor {up['busy_ms_per_s']:.3f} ms/s during "
                 f"{up['connections']} connections, {up['idle_ms_per_s']:.3f} ms/s idle; "
                 f"{up['per_connection_us']:.2f} us per connection")
    return out
