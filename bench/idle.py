"""0. Idle cost: CPU of the whole tree when nothing happens, against a floor.

The floor is a bare ``python3 -S`` process, started here, that wakes once
per beat and sends one beat-sized record over a SOCK_SEQPACKET socketpair
(the bench holds the other end and drains it between windows): the least a
Python process that proves it is alive every beat can cost on this machine.

The daemon runs with one pcap sensor on tap0, in two states: armed (down,
waiting for a trigger) and up and quiet (a trigger brought it up, the start
command ended, no traffic since; long ttl). In each window the daemon's tree
and the floor run side by side, so both see the same machine; the figure is
the ratio of their CPU time (schedstat, ns). A window is a whole number of
heartbeat periods long, so periodic wake-ups fall in it the same number of
times whatever the phase.
"""

from __future__ import annotations

import socket
import statistics
import subprocess
import sys
import time
from typing import Any

from bench.lab import FILTER, Cpu, Lab, role, running
from bench.settings import Settings
from tests.support.netlab import title
from tuninetd.common import wire

FLOOR = (
    "import socket,sys,time\n"
    "s=socket.socket(fileno=int(sys.argv[1]))\n"
    "beat=float(sys.argv[2]);record=b'x'*int(sys.argv[3])\n"
    "t=time.monotonic()\n"
    "while True:\n"
    " t+=beat;time.sleep(max(0.0,t-time.monotonic()));s.send(record)\n"
)


class Floor:
    """The reference process: one wake-up and one beat-sized record per beat."""

    def __init__(self, beat: float) -> None:
        self.mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        size = len(wire.encode("beat", n=0, mode="armed"))
        self.proc = subprocess.Popen(
            [sys.executable, "-S", "-c", FLOOR, str(theirs.fileno()), str(beat), str(size)],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL)
        theirs.close()
        self.mine.setblocking(False)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def drain(self) -> None:
        while True:
            try:
                self.mine.recv(4096)
            except BlockingIOError:
                return

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.mine.close()


def _window(daemon: int, floor: Floor, seconds: float) -> dict[str, Any]:
    floor.drain()
    ours, ref = Cpu.of_tree(daemon), Cpu.of_tree(floor.pid)
    time.sleep(seconds)
    ours_after, ref_after = Cpu.of_tree(daemon), Cpu.of_tree(floor.pid)
    floor.drain()
    cpu, floor_cpu = ours_after.since(ours)[0], ref_after.since(ref)[0]
    roles = {role(title(pid)): spent * 1000 / seconds
             for pid, spent in ours_after.by_pid(ours).items()}
    return {
        "seconds": seconds,
        "tree_ms_per_s": cpu * 1000 / seconds,
        "floor_ms_per_s": floor_cpu * 1000 / seconds,
        "ratio": cpu / floor_cpu if floor_cpu > 0 else float("inf"),
        "by_role_ms_per_s": roles,
    }


def _summary(windows: list[dict[str, Any]]) -> dict[str, Any]:
    ratios = [w["ratio"] for w in windows]
    return {
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "tree_ms_per_s": statistics.median(w["tree_ms_per_s"] for w in windows),
        "floor_ms_per_s": statistics.median(w["floor_ms_per_s"] for w in windows),
        "windows": windows,
    }


def measure(lab: Lab, cfg: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"unit": "ms of CPU per second", "beat": cfg.beat}
    floor = Floor(cfg.beat)
    try:
        args = ["-i", "tap0", "-f", FILTER, "-t", "3600", "--beat", str(cfg.beat)]
        with running(lab, "idle", args, sensors=1) as bench:
            for state in ("armed", "up_quiet"):
                if state == "up_quiet":
                    bench.up(0)
                    bench.ready("counting")  # and the executor idle: the command ended
                time.sleep(2 * cfg.beat)  # past the hello / trigger bustle
                windows = [_window(bench.pid, floor, cfg.idle_seconds)
                           for _ in range(cfg.idle_rounds)]
                out[state] = _summary(windows)
                cfg.progress(f"idle {state}: {out[state]['tree_ms_per_s']:.3f} ms/s, "
                             f"floor {out[state]['floor_ms_per_s']:.3f} ms/s, "
                             f"ratio {out[state]['ratio']:.2f} "
                             f"({out[state]['ratio_min']:.2f} .. {out[state]['ratio_max']:.2f})")
    finally:
        floor.close()
    return out
