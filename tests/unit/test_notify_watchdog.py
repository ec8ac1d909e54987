"""systemd's watchdog, on the test's clock: pinged every beat while every
worker is well when WATCHDOG_PID is ours (or not set), never when it names
another process."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from tuninetd.common.wire import Mode
from tuninetd.supervisor.events import Ready, Snapshot, WorkerView
from tuninetd.supervisor.ops.notify import Notifier, SystemdNotify

BEAT = 0.25  # exact in binary: each tick lands on the next ping's time
WELL = Snapshot(state="down", ttl=600, idle=None, trigger_sensor="", title="down",
                workers=(WorkerView("pcap:tap0", "sensor pcap tap0", 1234, Mode.ARMED, 0, 1.0,
                                    True, True, False, ""),),
                running=None, pending=(), command_pid=0)


def received(sink: socket.socket) -> list[str]:
    fields = []
    while True:
        try:
            fields += sink.recv(4096).decode().split("\n")
        except BlockingIOError:
            return fields


def pings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, watchdog_pid: str | None) -> int:
    """WATCHDOG=1 datagrams sent over 50 beats after READY."""
    path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sink:
        sink.bind(str(path))
        sink.setblocking(False)
        monkeypatch.setenv("NOTIFY_SOCKET", str(path))
        monkeypatch.setenv("WATCHDOG_USEC", "3000000")
        if watchdog_pid is None:
            monkeypatch.delenv("WATCHDOG_PID", raising=False)
        else:
            monkeypatch.setenv("WATCHDOG_PID", watchdog_pid)
        notify = SystemdNotify(Notifier.from_environment(), lambda: WELL, BEAT)
        notify.observe(Ready())
        fields = received(sink)
        for i in range(50):
            notify.tick(1000.0 + i * BEAT)
            fields += received(sink)  # read as systemd does: the queue holds ten
        notify.close()
    assert "READY=1" in fields
    return fields.count("WATCHDOG=1")


def test_the_watchdog_is_pinged_every_beat_when_it_is_ours(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pings(tmp_path, monkeypatch, str(os.getpid())) == 50
    (tmp_path / "notify.sock").unlink()
    assert pings(tmp_path, monkeypatch, None) == 50


def test_no_watchdog_ping_when_the_watchdog_is_another_process(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert pings(tmp_path, monkeypatch, "1") == 0
