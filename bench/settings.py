"""How long and how often: the full run, and the quick one for CI."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field


@dataclass
class StopRun:
    """One stop-precision configuration: the daemon's ttl and beat, and how
    many cycles per sensor kind."""

    ttl: int
    beat: float
    cycles: int


@dataclass
class Settings:
    quick: bool
    beat: float  # --beat of every daemon the bench starts
    cost_seconds: float  # sending time of one cost window
    cost_idle_seconds: float  # the no-traffic reading before the windows
    latency_cycles: int  # start latency, per sensor kind
    stop_runs: list[StopRun]  # stop precision: (ttl, beat, cycles per sensor kind)
    restart_rounds: int  # restart, per sensor kind and state
    idle_seconds: float  # one idle window: a whole number of heartbeats (6 beats)
    idle_rounds: int  # idle windows per state
    hold_cycles: int  # first connections, with --hold and without
    hold_connections: int  # new connections while up, at least, for the hold's cost
    memory_trees: list[tuple[int, int]] = field(
        default_factory=lambda: [(1, 0), (1, 1), (2, 2), (8, 8)]
    )  # (pcap sensors, nflog sensors)
    began: float = field(default_factory=time.monotonic)

    @classmethod
    def full(cls) -> Settings:
        return cls(quick=False, beat=1.0, cost_seconds=8.0, cost_idle_seconds=4.0,
                   latency_cycles=50, restart_rounds=5, idle_seconds=12.0, idle_rounds=3,
                   hold_cycles=30, hold_connections=1000,
                   stop_runs=[StopRun(2, 1.0, 20), StopRun(1, 1.0, 10)])

    @classmethod
    def fast(cls) -> Settings:
        return cls(quick=True, beat=0.25, cost_seconds=0.5, cost_idle_seconds=0.5,
                   latency_cycles=10, restart_rounds=1, idle_seconds=3.0, idle_rounds=1,
                   hold_cycles=5, hold_connections=200,
                   stop_runs=[StopRun(1, 0.25, 3)])

    def progress(self, text: str) -> None:
        print(f"[{time.monotonic() - self.began:6.1f} s] {text}", file=sys.stderr, flush=True)

    def elapsed(self) -> float:
        return time.monotonic() - self.began
