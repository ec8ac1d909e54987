"""5. Restart: SIGKILL of a sensor, then how long until its replacement works.

A fresh daemon per round (the restart backoff doubles for a worker killed
again within a minute; each sensor is killed once per daemon), with a pcap
sensor on tap0 and an nflog sensor on GROUP (tap1's traffic).

- up (counting): frames flow on both veths at RATE; the state is up. Kill a
  sensor: time to the replacement's ``hello`` and to its first ``beat`` with
  a non-zero count, both as the supervisor receives them. These are read
  off ``strace -ttt`` of the supervisor's recvfrom calls (CLOCK_REALTIME,
  microseconds); without strace, the hello is the log line "... is back"
  as polled, and the first count is not measured.
- armed (down): no traffic. Kill a sensor and start sending on its veth at
  once: time to the first line of the start command, which is the
  replacement's first packet as a trigger, through to the command.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

from bench.lab import (
    FILTER,
    GROUP,
    Bench,
    Lab,
    running,
    stop_generator,
)
from bench.settings import Settings
from bench.timing import KINDS, Summary
from tests.support.netlab import wait_for

RATE = 2000  # packets per second on each veth while up
_CALL = re.compile(r'^(\d+\.\d+) recvfrom\((\d+), "((?:[^"\\]|\\.)*)"')


class Strace:
    """``strace -ttt -e trace=recvfrom`` of the supervisor: what each worker
    said, when it arrived, on which fd."""

    def __init__(self, pid: int, folder: Path) -> None:
        self.out = folder / f"strace-{pid}-{time.monotonic_ns()}.txt"
        self.err = folder / f"{self.out.name}.err"
        with open(self.err, "wb") as err:
            self.proc = subprocess.Popen(
                ["strace", "-ttt", "-s", "512", "-e", "trace=recvfrom", "-e", "signal=none",
                 "-o", str(self.out), "-p", str(pid)],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err,
            )
        wait_for("strace attached", lambda: "attached" in self.err.read_text(errors="replace"),
                 10.0)

    def messages(self) -> list[tuple[float, int, dict[str, Any]]]:
        """(realtime seconds, fd, message) of every record received."""
        out = []
        text = self.out.read_text(errors="replace") if self.out.exists() else ""
        for line in text.splitlines():
            match = _CALL.match(line)
            if not match:
                continue
            raw = match.group(3).replace('\\"', '"').replace("\\\\", "\\")
            with contextlib.suppress(ValueError):
                msg = json.loads(raw)
                if isinstance(msg, dict):
                    out.append((float(match.group(1)), int(match.group(2)), msg))
        return out

    def after_kill(self, killed_s: float) -> tuple[float | None, float | None]:
        """Seconds from the kill to the first hello after it, and to the first
        beat with a count on that hello's fd."""
        hello_at: float | None = None
        hello_fd = -1
        for when, fd, msg in self.messages():
            if when < killed_s:
                continue
            if hello_at is None and msg.get("t") == "hello":
                hello_at, hello_fd = when, fd
            elif hello_at is not None and fd == hello_fd and msg.get("t") == "beat" \
                    and int(msg.get("n", 0)) > 0:
                return hello_at - killed_s, when - killed_s
        return (None if hello_at is None else hello_at - killed_s), None

    def close(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _args(cfg: Settings) -> list[str]:
    return ["-i", "tap0", "-f", FILTER, "-n", str(GROUP), "-t", "600", "--beat", str(cfg.beat)]


def _round_up(lab: Lab, cfg: Settings, use_strace: bool) -> dict[str, dict[str, float | None]]:
    out: dict[str, dict[str, float | None]] = {}
    with running(lab, "restart-up", _args(cfg), sensors=2) as bench:
        gens = [lab.generator(veth, RATE, 120) for _kind, veth in KINDS]
        try:
            bench.rec.wait(1)
            bench.ready("counting")
            tracer = Strace(bench.pid, lab.dir) if use_strace else None
            try:
                for kind, _veth in KINDS:
                    out[kind] = _kill_counting(bench, kind, tracer, cfg)
            finally:
                if tracer is not None:
                    tracer.close()
        finally:
            for gen in gens:
                stop_generator(gen)
    return out


def _kill_counting(bench: Bench, kind: str, tracer: Strace | None,
                   cfg: Settings) -> dict[str, float | None]:
    back = len([line for line in bench.daemon.lines() if "is back" in line])
    victim = bench.sensor_pids(kind)[0]
    killed = time.time()
    os.kill(victim, signal.SIGKILL)
    bench.daemon.wait_log("is back", timeout=10, count=back + 1)
    logged = time.time() - killed
    hello: float | None = logged
    first: float | None = None
    if tracer is not None:

        def counted() -> tuple[float | None, float | None] | None:
            assert tracer is not None
            found = tracer.after_kill(killed)
            return found if found[1] is not None else None

        hello, first = wait_for("the replacement's first count", counted, 10 + 5 * cfg.beat)
    bench.ready("counting")
    return {"hello_s": hello, "first_count_s": first, "log_line_s": logged}


def _round_armed(lab: Lab, cfg: Settings) -> dict[str, float]:
    out: dict[str, float] = {}
    with running(lab, "restart-armed", _args(cfg), sensors=2) as bench:
        for kind, veth in KINDS:
            bench.ready("armed")
            count = len(bench.rec.events())
            victim = bench.sensor_pids(kind)[0]
            killed = time.time_ns()
            os.kill(victim, signal.SIGKILL)
            gen = lab.generator(veth, RATE, 30)
            try:
                event, stamp, sensor = bench.rec.wait(count + 1, timeout=15)
            finally:
                stop_generator(gen)
            if event != "start" or not sensor.startswith(kind):
                raise AssertionError(f"expected a start from {kind}, got {event} from {sensor}")
            out[kind] = (stamp - killed) / 1e9
            # Frames counted after the last beat would fire again on the arm
            # that SIGHUP brings (by design): let a beat take them first.
            time.sleep(1.5 * cfg.beat)
            bench.down()
    return out


def measure(lab: Lab, cfg: Settings) -> dict[str, Any]:
    use_strace = shutil.which("strace") is not None
    samples: dict[str, dict[str, list[float]]] = {
        kind: {"hello": [], "first_count": [], "first_trigger": []} for kind, _ in KINDS
    }
    for _ in range(cfg.restart_rounds):
        for kind, result in _round_up(lab, cfg, use_strace).items():
            for key in ("hello", "first_count"):
                value = result[f"{key}_s"]
                if value is not None:
                    samples[kind][key].append(value * 1000)
        for kind, seconds in _round_armed(lab, cfg).items():
            samples[kind]["first_trigger"].append(seconds * 1000)
    out: dict[str, Any] = {"unit": "ms", "beat": cfg.beat, "strace": use_strace,
                           "backoff_first_s": 0.5}
    for kind, figures in samples.items():
        out[kind] = {key: Summary(values).as_dict() if values else None
                     for key, values in figures.items()}
        hello, count, trig = (out[kind][k] for k in ("hello", "first_count", "first_trigger"))
        cfg.progress(
            f"restart {kind}: hello max {hello['max']:.0f} ms, first trigger max "
            f"{trig['max']:.0f} ms, first count max "
            + (f"{count['max']:.0f} ms" if count else "n/a")
        )
    return out
