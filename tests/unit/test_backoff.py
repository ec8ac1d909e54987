"""Replacement backoff of a worker that keeps exiting: 0.5 s doubling to 30 s,
back to 0.5 s once it ran for a minute."""

from __future__ import annotations

from tuninetd.common import wire
from tuninetd.supervisor.children import Worker


def crash_at(w: Worker, started: float, ran: float) -> float:
    w.pid, w.started = 4242, started
    return w.reaped(started + ran)


def test_backoff_doubles_up_to_thirty_seconds_and_resets_after_a_healthy_minute() -> None:
    w = Worker("pcap:eth0", "m", {}, wire.SENSOR_MESSAGES, "sensor pcap eth0")
    delays = [crash_at(w, 100.0 * i, 1.0) for i in range(9)]
    assert delays == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]
    assert w.restarts == 9
    assert not w.alive and w.respawn_at == 800.0 + 1.0 + 30
    assert crash_at(w, 2000.0, 61.0) == 0.5  # a minute of health forgives the past
    assert crash_at(w, 3000.0, 1.0) == 1
