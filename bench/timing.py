"""2. Start latency and 3. stop precision.

One daemon with a pcap sensor on tap0 and an nflog sensor on GROUP (fed by
tap1's traffic): a frame sent on peer0 reaches the pcap sensor only, one on
peer1 the nflog sensor only, and the recorder names the sensor that fired.

Start latency: the CLOCK_REALTIME nanoseconds just before the trigger frame
is sent, to those that date(1) prints as the first line of the start command.
Then SIGHUP brings the state down, and the next cycle waits for the sensors
to be armed again. For scale, the same command started directly by
posix_spawn (no daemon in between) is timed the same way, once after each
pair of triggers: the part of the latency no daemon can avoid on this
machine.

Stop precision: a trigger, then a burst of frames every 10 ms for a random
time (up to a beat, so the last packet falls anywhere in a beat), then
silence: the stop command's timestamp minus the last frame's, minus the ttl.
Never below zero is "never early"; the beat bounds how late. A start right
after the stop (within 0.3 s, no frame sent) means the stop was decided
before the sensor had reported the last frames: counted as "fired again".
"""

from __future__ import annotations

import os
import random
import time
from dataclasses import dataclass
from typing import Any

from bench.lab import FILTER, GROUP, Bench, Lab, Recorder, running
from bench.settings import Settings, StopRun

KINDS = (("pcap", 0), ("nflog", 1))  # sensor kind, veth whose frames reach it
BURST_GAP = 0.01
RETRIGGER_WAIT = 0.3


def percentile(values: list[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


@dataclass
class Summary:
    samples: list[float]

    def as_dict(self) -> dict[str, Any]:
        s = self.samples
        return {
            "n": len(s),
            "min": min(s),
            "p50": percentile(s, 50),
            "p90": percentile(s, 90),
            "p99": percentile(s, 99),
            "max": max(s),
            "mean": sum(s) / len(s),
            "samples": [round(x, 3) for x in s],
        }


def _daemon_args(ttl: int, cfg: Settings) -> list[str]:
    return ["-i", "tap0", "-f", FILTER, "-n", str(GROUP), "-t", str(ttl),
            "--beat", str(cfg.beat)]


def _start_cycle(lab: Lab, bench: Bench, kind: str, veth: int) -> float:
    bench.ready("armed")
    time.sleep(random.uniform(0.005, 0.05))  # no lockstep with the beats
    count = len(bench.rec.events())
    sent = lab.send(veth)
    event, stamp, sensor = bench.rec.wait(count + 1)
    if event != "start" or not sensor.startswith(kind):
        raise AssertionError(f"expected a start from {kind}, got {event} from {sensor}")
    bench.down()
    return (stamp - sent) / 1e6


class CommandAlone:
    """The same recording command started directly (posix_spawn, no daemon),
    to its first line: what any daemon pays for it on this machine."""

    def __init__(self, lab: Lab) -> None:
        self.rec = Recorder(lab.dir, "floor")
        self.env = {**os.environ, "TUNINETD_SENSOR": "none"}
        self.started = 0

    def cycle(self) -> float:
        time.sleep(random.uniform(0.005, 0.05))  # as before a trigger
        sent = time.time_ns()
        pid = os.posix_spawn(str(self.rec.script), [str(self.rec.script), "start"], self.env)
        self.started += 1
        line = self.rec.wait(self.started)[1]  # waited for as the daemon's start is
        os.waitpid(pid, 0)
        return (line - sent) / 1e6


def start_latency(lab: Lab, cfg: Settings) -> dict[str, Any]:
    """The command alone is timed between the daemon's cycles, not in a block
    before them: the machine's state drifts over a run, and the overhead is
    the difference of the two."""
    out: dict[str, Any] = {"unit": "ms", "beat": cfg.beat}
    alone = CommandAlone(lab)
    with running(lab, "latency", _daemon_args(600, cfg), sensors=2) as bench:
        samples: dict[str, list[float]] = {kind: [] for kind, _ in KINDS}
        samples["command_alone"] = []
        for _ in range(cfg.latency_cycles):
            for kind, veth in KINDS:
                samples[kind].append(_start_cycle(lab, bench, kind, veth))
            samples["command_alone"].append(alone.cycle())
        for kind, values in samples.items():
            out[kind] = Summary(values).as_dict()
            cfg.progress(f"start latency {kind}: p50 {out[kind]['p50']:.2f} ms, "
                         f"p99 {out[kind]['p99']:.2f} ms")
    return out


def _stop_cycle(lab: Lab, bench: Bench, kind: str, veth: int,
                run: StopRun) -> tuple[float, bool]:
    """How late the stop came (ms; negative: early), and whether the sensor
    fired again right after it: packets it had not reported yet when the
    stop was decided, which is how an early stop shows."""
    bench.ready("armed")
    count = len(bench.rec.events())
    last = lab.send(veth)
    event, _stamp, sensor = bench.rec.wait(count + 1)
    if event != "start" or not sensor.startswith(kind):
        raise AssertionError(f"expected a start from {kind}, got {event} from {sensor}")
    end = time.monotonic() + random.uniform(0, run.beat)
    while time.monotonic() < end:
        time.sleep(BURST_GAP)
        last = lab.send(veth)
    event, stamp, _sensor = bench.rec.wait(count + 2, timeout=run.ttl + 5 * run.beat + 5)
    if event != "stop":
        raise AssertionError(f"expected a stop, got {event}")
    time.sleep(RETRIGGER_WAIT)
    again = len(bench.rec.events()) > count + 2
    if again:  # let that start run its course
        bench.rec.wait(count + 4, timeout=run.ttl + 5 * run.beat + 5)
    return (stamp - last) / 1e6 - run.ttl * 1000, again


def _stop_run(lab: Lab, run: StopRun, cfg: Settings) -> dict[str, Any]:
    out: dict[str, Any] = {"ttl": run.ttl, "beat": run.beat}
    args = ["-i", "tap0", "-f", FILTER, "-n", str(GROUP), "-t", str(run.ttl),
            "--beat", str(run.beat)]
    with running(lab, f"stop-{run.ttl}-{run.beat}", args, sensors=2) as bench:
        samples: dict[str, list[float]] = {kind: [] for kind, _ in KINDS}
        again: dict[str, int] = {kind: 0 for kind, _ in KINDS}
        for _ in range(run.cycles):
            for kind, veth in KINDS:
                late, fired = _stop_cycle(lab, bench, kind, veth, run)
                samples[kind].append(late)
                again[kind] += fired
        for kind, values in samples.items():
            out[kind] = {**Summary(values).as_dict(), "fired_again": again[kind]}
            cfg.progress(f"stop {kind} (ttl {run.ttl} s, beat {run.beat:g} s): late by "
                         f"{out[kind]['min']:.1f} .. {out[kind]['max']:.1f} ms, "
                         f"fired again {again[kind]}x")
    return out


def stop_precision(lab: Lab, cfg: Settings) -> dict[str, Any]:
    """The first configuration is the one the targets judge (ttl above the
    beat); a second one, when set, has ttl equal to the beat (-t 1 with the
    default beat), the smallest ttl the command line takes."""
    main, *others = cfg.stop_runs
    out: dict[str, Any] = {"unit": "ms", **_stop_run(lab, main, cfg)}
    for run in others:
        out["ttl_equals_beat" if run.ttl <= run.beat else f"ttl_{run.ttl}"] = \
            _stop_run(lab, run, cfg)
    return out
