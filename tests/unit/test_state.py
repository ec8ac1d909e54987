"""The state machine and the executor queue, on made-up clocks."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tuninetd.supervisor.state import CommandQueue, Machine


def test_trigger_brings_up_once() -> None:
    m = Machine(ttl=10)
    assert m.trigger(100.0)
    assert m.up
    assert not m.trigger(101.0)  # a second sensor while up is only activity
    assert m.last_activity == 101.0


def test_stop_not_before_ttl_after_last_activity() -> None:
    m = Machine(ttl=10)
    m.trigger(100.0)
    m.activity(105.0, packets=3)
    assert not m.expire(114.999)
    assert m.deadline() == 115.0
    assert m.expire(115.0)
    assert not m.up
    assert m.deadline() is None


def test_beats_without_packets_are_not_activity() -> None:
    m = Machine(ttl=10)
    m.trigger(100.0)
    m.activity(108.0, packets=0)
    assert m.expire(110.0)


def test_activity_while_down_neither_brings_up_nor_shortens_the_next_ttl() -> None:
    m = Machine(ttl=10)
    m.activity(50.0, packets=5)
    assert not m.up and not m.expire(1000.0)
    assert m.trigger(100.0)  # the trigger still brings it up
    assert m.deadline() == 110.0  # counted from the trigger, not from the earlier packets


def test_force_down_reports_whether_it_was_up() -> None:
    m = Machine(ttl=10)
    assert not m.force_down()
    m.trigger(1.0)
    assert m.force_down()
    assert not m.up


def test_late_beat_never_moves_activity_back() -> None:
    m = Machine(ttl=10)
    m.trigger(100.0)
    m.activity(99.0, packets=1)
    assert m.last_activity == 100.0


def test_idle_is_from_what_the_sensors_reported_not_from_an_up_without_a_packet() -> None:
    """Resumed up (or `tuninetd up`): the ttl clock starts, but no packet was
    seen, so idle is unknown, not the daemon's uptime; the first reported
    packet sets it."""
    m = Machine(ttl=10)
    assert m.trigger(100.0, seen=False)
    assert m.deadline() == 110.0
    assert m.idle(101.9) is None
    m.activity(102.0, packets=1)
    assert m.idle(102.5) == 0.5
    assert m.deadline() == 112.0


def test_idle_follows_triggers_and_counted_beats_only() -> None:
    m = Machine(ttl=10)
    assert m.idle(5.0) is None
    m.activity(50.0, packets=2)  # while down: a sensor reported packets
    assert m.idle(51.0) == 1.0
    m.trigger(60.0)
    m.activity(63.0, packets=0)
    assert m.idle(64.0) == 4.0
    m.activity(65.0, packets=1)
    assert m.idle(66.0) == 1.0


def test_queue_runs_one_at_a_time_in_order() -> None:
    q = CommandQueue()
    q.push("start")
    job = q.take()
    assert job is not None and job.event == "start"
    q.push("stop")
    assert q.take() is None  # start still running
    assert q.finish(job.id) is job
    nxt = q.take()
    assert nxt is not None and nxt.event == "stop"


def test_pending_stop_and_new_start_cancel_out() -> None:
    q = CommandQueue()
    q.push("start")
    running = q.take()
    assert running is not None
    q.push("stop")
    cancelled = q.push("start")
    assert cancelled is not None and cancelled.event == "stop"
    assert not q.pending
    q.finish(running.id)
    assert q.take() is None
    q.push("stop")  # alternation continues from the start that ran
    assert [j.event for j in q.pending] == ["stop"]


def test_two_starts_in_a_row_are_refused() -> None:
    q = CommandQueue()
    q.push("start")
    with pytest.raises(ValueError):
        q.push("start")


def test_finish_of_unknown_job_is_ignored() -> None:
    q = CommandQueue()
    q.push("start")
    job = q.take()
    assert job is not None
    assert q.finish(job.id + 1) is None
    assert q.running is job


def test_drop_pending_keeps_the_running_one() -> None:
    q = CommandQueue()
    q.push("start")
    q.take()
    q.push("stop")
    assert [j.event for j in q.drop_pending()] == ["stop"]
    assert q.running is not None


@given(st.lists(st.sampled_from(["edge", "take", "finish"]), max_size=200))
def test_executed_commands_strictly_alternate(steps: list[str]) -> None:
    """Whatever the interleaving of state changes and executor progress, the
    commands the executor runs alternate start/stop, one at a time, and are
    numbered 1, 2, 3 ... as handed over (the executor waits in the next
    one's cgroup), jobs that cancelled out included."""
    q = CommandQueue()
    m = Machine(ttl=1)
    now = 0.0
    executed: list[str] = []
    ids: list[int] = []
    for step in steps:
        now += 1
        if step == "edge":
            if m.up:
                m.force_down()
                q.push("stop")
            else:
                m.trigger(now)
                q.push("start")
        elif step == "take":
            job = q.take()
            if job is not None:
                executed.append(job.event)
                ids.append(job.id)
        elif q.running is not None:
            q.finish(q.running.id)
        assert len(q.pending) <= 1
    assert all(a != b for a, b in itertools.pairwise(executed))
    assert ids == list(range(1, len(ids) + 1))
    assert q.next_id == len(ids) + 1
    if executed:
        assert executed[0] == "start"
