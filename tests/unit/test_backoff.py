"""Replacement backoff of a worker that keeps exiting: 0.5 s doubling to 30 s,
back to 0.5 s once it ran for a minute; a spawn that fails takes the same
backoff. And how an exit is worded."""

from __future__ import annotations

from tuninetd.common import wire
from tuninetd.supervisor.arbiter import exit_reason
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


def test_a_failed_spawn_waits_the_next_delay_of_the_same_backoff() -> None:
    w = Worker("pcap:eth0", "m", {}, wire.SENSOR_MESSAGES, "sensor pcap eth0")
    assert crash_at(w, 0.0, 1.0) == 0.5
    assert [w.retry_later(10.0 + i) for i in range(3)] == [1, 2, 4]
    assert w.respawn_at == 12.0 + 4 and w.mode is wire.Mode.RESTARTING and w.restarts == 1


def test_exit_reasons() -> None:
    w = Worker("nflog:1", "m", {}, wire.SENSOR_MESSAGES, "sensor nflog 1")
    assert exit_reason(w, 1 << 8) == (
        "exited with status 1 (a failure it did not report, such as an uncaught exception)")
    assert exit_reason(w, 0) == "exited with status 0"
    assert exit_reason(w, 9) == "killed by signal 9 (SIGKILL)"
    w.last_error = "nflog group 1 is already bound by another process"
    assert exit_reason(w, 1 << 8) == (
        "exited with status 1 (its last error: nflog group 1 is already bound by another "
        "process)")
    w.exit_reason = "was silent"  # killed by the supervisor: that is the reason
    assert exit_reason(w, 9) == "was silent"
