"""The systemd notify protocol against a real AF_UNIX datagram socket this
test binds (a path, and an abstract "@..." address): READY=1 only once the
workers said hello, STATUS= following the state, WATCHDOG=1 every beat while
every worker is healthy and not while one is being replaced, STOPPING=1 on
SIGTERM, and none of it leaking into the workers' environment.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import Daemon, Netns, events, gone, recorder, sensors, wait_for, workers
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.56.0.1", dst="10.56.0.2") / UDP(sport=4000, dport=5353))
NOTIFY_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notify:
    """The systemd side: every datagram, with its arrival time."""

    def __init__(self, address: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.got: list[tuple[float, list[str]]] = []

    def poll(self) -> list[tuple[float, list[str]]]:
        while True:
            try:
                data = self.sock.recv(4096)
            except BlockingIOError:
                return self.got
            self.got.append((time.monotonic(), data.decode().split("\n")))

    def wait(self, field: str, timeout: float = 15.0,
             after: float = 0.0) -> tuple[float, list[str]]:
        def probe() -> tuple[float, list[str]] | None:
            return next(((t, f) for t, f in self.poll()
                         if t >= after and any(x.startswith(field) for x in f)), None)

        return wait_for(f"notify {field!r}", probe, timeout)

    def times(self, field: str) -> list[float]:
        return [t for t, f in self.poll() if field in f]

    def statuses(self) -> list[str]:
        return [x[len("STATUS="):] for _, f in self.poll() for x in f if x.startswith("STATUS=")]


def environ(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/environ", "rb") as f:
        pairs = [e.decode(errors="replace").partition("=") for e in f.read().split(b"\0") if e]
    return {k: v for k, _, v in pairs}


def sensor_pid(d: Daemon) -> int:
    return sensors(d).get("tuninetd: sensor pcap tap0", 0)


def test_ready_status_watchdog_stopping(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    path = tmp_path / "notify.sock"
    notify = Notify(str(path))
    monkeypatch.setenv("NOTIFY_SOCKET", str(path))
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    script, record = recorder(tmp_path, body="env | grep -c ^NOTIFY_SOCKET= > $0.$1.env || true")
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1",
                     "--beat", str(BEAT))

    _, fields = notify.wait("READY=1")
    # The sensor said hello, so it had dropped to nobody already.
    sensor = sensor_pid(d)
    assert sensor and psutil.Process(sensor).uids().real != 0
    assert f"MAINPID={d.pid}" in fields
    assert "STATUS=down (standby, waiting for traffic)" in fields
    ready_at = notify.times("READY=1")
    assert len(ready_at) == 1
    assert not [t for t in notify.times("WATCHDOG=1") if t < ready_at[0]]
    for pid in (d.pid, *workers(d.pid)):
        env = environ(pid)
        if pid != d.pid:
            assert not set(NOTIFY_VARS) & env.keys(), f"worker {pid} inherited {env.keys()}"

    # The watchdog every beat while all is well.
    wait_for("5 watchdog pings", lambda: len(notify.times("WATCHDOG=1")) >= 6)
    pings = notify.times("WATCHDOG=1")
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    # Correctness: systemd restarts a service that misses WATCHDOG_USEC (3 s).
    assert max(gaps) < 3.0, gaps

    # STATUS follows the state: up on a trigger, down after ttl.
    veth.sender().send(FRAME)
    wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    wait_for("status back to down", lambda: notify.statuses()[-1:] == [
        "down (standby, waiting for traffic)"])
    assert "up (started by pcap:tap0)" in notify.statuses()
    # Commands run one at a time: the start had finished (its file written)
    # before the stop was recorded.
    assert Path(f"{script}.start.env").read_text().strip() == "0", "start saw NOTIFY_SOCKET"

    # A worker being replaced is not healthy: no ping until it is back.
    os.kill(sensor, signal.SIGKILL)
    killed = time.monotonic()
    wait_for("a new sensor", lambda: sensor_pid(d) not in (0, sensor))
    d.wait_log("is back")
    back = time.monotonic()
    wait_for("pings again", lambda: [t for t in notify.times("WATCHDOG=1") if t > back])
    during = [t for t in notify.times("WATCHDOG=1") if killed + 0.1 < t < back - 0.1]
    pings = notify.times("WATCHDOG=1")
    gap = max(b - a for a, b in itertools.pairwise(pings) if b > killed)
    assert gap >= 0.4, f"watchdog fed while a worker was down (gap {gap:.2f} s)"
    assert len(during) <= 1, during
    assert any("not well" in s for s in notify.statuses())

    children = list(workers(d.pid))
    os.kill(d.pid, signal.SIGTERM)
    _, fields = notify.wait("STOPPING=1")
    d.proc.wait(15)
    assert all(gone(p) for p in children)


def test_abstract_address_and_watchdog_for_another_pid(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An abstract socket lives in a network namespace: bind it in the daemon's."""
    address = f"@tnd-notify-{uuid.uuid4().hex[:8]}"
    with veth.entered():
        notify = Notify(address)
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "3000000")
    monkeypatch.setenv("WATCHDOG_PID", "1")  # the watchdog is someone else's
    script, _ = recorder(tmp_path)
    d = start_daemon(veth, "-i", "tap0", "-c", str(script), "--beat", str(BEAT))
    notify.wait("READY=1")
    os.kill(d.pid, signal.SIGTERM)
    notify.wait("STOPPING=1")
    assert d.proc.wait(15) == 0
    # No ping from READY to the end (that none would come however long it
    # ran is tests/unit/test_notify_watchdog.py's to show, on its own clock).
    assert notify.times("WATCHDOG=1") == []
