"""The supervisor's core on the test's clock (tests/support/harness.py): the sensor
contract, the state machine's timing, the command queue, silent and dead
workers. No process, no root, no sleep: each deadline is checked on both
sides, an instant before and at it."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.garbage import obj
from tests.support.harness import EXITED, Core, FakeWorker
from tuninetd.common import wire
from tuninetd.common.logs import log
from tuninetd.supervisor.arbiter import STARTUP_GRACE
from tuninetd.supervisor.children import HELLO_GRACE, SILENT_BEATS, Backoff
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import CommandEnded, Triggered
from tuninetd.supervisor.service import REPORT_WAIT

EPSILON = 1e-6
BAD = "sent a bad message"
FACTS = {"link": "raw", "ip": 4, "src": "192.0.2.1", "dst": "192.0.2.2", "proto": 17}
TRIGGER = obj("trigger", **FACTS)


@pytest.fixture
def core(tmp_path: Path) -> Core:
    c = Core(tmp_path, sensors=2)
    c.ready()
    return c


@pytest.fixture
def logged(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """The daemon's log lines (its logger does not propagate once set up)."""
    log.addHandler(caplog.handler)
    level = log.level
    log.setLevel(logging.INFO)
    yield caplog
    log.setLevel(level)
    log.removeHandler(caplog.handler)


def beat_all(core: Core, *workers: FakeWorker) -> None:
    for w in workers:
        w.say("beat", n=0, mode="idle" if w is core.executor else w.mode.value)
    core.turn()


def up(core: Core, at: float) -> wire.Message:
    """The first sensor fires at ``at``; the start run, finished."""
    core.at(at).trigger(core.sensors[0])
    [start] = core.runs()
    core.done(start)
    return start


# -- the sensor contract (common/wire.py: SENSOR_PERMITS) --------------------------------


def test_the_supervisor_follows_the_contract_of_an_honest_sensor(core: Core) -> None:
    """Hello, beats, a trigger, armed again, another trigger: no kill."""
    a, b = core.sensors
    up(core, 1000.0)
    assert b.verbs() == ["count"] and a.verbs() == []
    a.say("beat", n=3, mode="counting")
    core.at(1005.0).turn()
    core.at(1015.0).turn()  # the ttl is over: both report, then stop, and both armed
    assert a.verbs() == ["report"] and b.verbs() == ["report"]
    beat_all(core, a, b)
    assert a.verbs() == ["arm"] and b.verbs() == ["arm"]
    core.trigger(b)
    assert not a.killed and not b.killed
    assert [e.fired for e in core.seen.of(Triggered)] == [True, True]


@pytest.mark.parametrize(("rule", "hello", "records", "reason"), [
    ("hello first", False, [obj("beat", n=0, mode="armed")], "beat before hello"),
    ("hello first, a trigger too", False, [TRIGGER], "trigger before hello"),
    ("hello once", True, [obj("hello", pid=1)], "hello again"),
    ("one trigger per arming", True, [TRIGGER, TRIGGER], "trigger while not armed"),
    ("an error is the last word", True,
     [obj("error", reason="x", fatal=True), obj("beat", n=0, mode="armed")],
     "beat after a fatal error"),
    ("one error", True,
     [obj("error", reason="x", fatal=True), obj("error", reason="y", fatal=True)],
     "error after a fatal error"),
    ("a sensor's modes only", True, [obj("beat", n=0, mode="idle")], "is not one of its"),
])
def test_a_sensor_breaking_a_rule_is_killed(tmp_path: Path, logged: pytest.LogCaptureFixture,
                                            rule: str, hello: bool, records: list[bytes],
                                            reason: str) -> None:
    core = Core(tmp_path, sensors=2)
    core.ready()
    s = core.sensors[0]
    core.exited(s)  # replaced by a sensor that breaks the rule
    core.at(1001.0).turn()
    assert s.verbs() == ["config"]
    if hello:
        s.say("hello", pid=s.pid)
    for record in records:
        s.say_raw(record)
    core.turn()
    assert s.killed == [BAD], rule
    assert any(reason in r.getMessage() for r in logged.records), (rule, logged.text)
    assert not core.sensors[1].killed and not core.executor.killed


def test_an_arming_that_crossed_a_trigger_on_its_way_allows_one_more(core: Core) -> None:
    """Armed again while its trigger was on its way (up and down at once): the
    trigger that crossed the arm is taken, and so is the one the new arming fires."""
    a, b = core.sensors
    core.trigger(a)
    assert [r["event"] for r in core.runs()] == ["start"]
    core.arbiter.handle_hup()  # down at once: b, never fired, is armed again
    assert b.verbs() == ["count", "arm"]
    b.say("trigger", **FACTS)
    core.turn()  # the trigger b sent before the orders came
    b.say("trigger", **FACTS)
    core.turn()  # the one the arm fired
    assert not b.killed
    b.say("trigger", **FACTS)
    core.turn()
    assert b.killed == [BAD]


def test_a_sensor_still_privileged_after_hello_is_killed(tmp_path: Path) -> None:
    core = Core(tmp_path)
    core.sensors[0].privileged = ["CapEff 000001ffffffffff"]
    core.executor.say("hello", pid=core.executor.pid)
    core.sensors[0].say("hello", pid=core.sensors[0].pid)
    with pytest.raises(StartupError, match="did not drop its privileges"):
        core.turn()


# -- the ttl clock -------------------------------------------------------------------------


def test_stop_comes_at_ttl_after_the_last_packet_once_every_sensor_reported(core: Core) -> None:
    a, b = core.sensors
    up(core, 1000.0)
    core.at(1004.0)
    a.say("beat", n=2, mode="counting")  # the last packets: the ttl runs from here
    core.turn()
    core.at(1014.0 - EPSILON).turn()
    assert core.runs() == [] and a.verbs() == [] and b.verbs() == ["count"]
    core.at(1014.0).turn()  # the ttl is over: the counting sensors are asked first
    assert a.verbs() == ["report"] and b.verbs() == ["report"] and core.runs() == []
    a.say("beat", n=0, mode="counting")
    b.say("beat", n=0, mode="counting")
    core.turn()
    [stop] = core.runs()
    assert stop["event"] == "stop"
    assert a.verbs() == ["arm"] and b.verbs() == ["arm"]


def test_a_packet_reported_late_keeps_the_state_up(core: Core) -> None:
    a, b = core.sensors
    up(core, 1000.0)
    core.at(1010.0).turn()
    assert a.verbs() == ["report"]
    a.say("beat", n=1, mode="counting")  # counted before the ttl ran out, told after
    b.say("beat", n=0, mode="counting")
    core.turn()
    assert core.runs() == [] and core.service.machine.up


def test_a_sensor_that_does_not_report_is_waited_for_report_wait_only(core: Core) -> None:
    _, b = core.sensors
    up(core, 1000.0)
    core.at(1010.0).turn()
    b.say("beat", n=0, mode="counting")
    core.turn()
    core.at(1010.0 + REPORT_WAIT - EPSILON).turn()
    assert core.runs() == []
    core.at(1010.0 + REPORT_WAIT).turn()
    assert [r["event"] for r in core.runs()] == ["stop"]


def test_sighup_hands_stop_over_in_the_same_pass(core: Core) -> None:
    """SIGHUP while up: the stop run is with the executor before the loop
    turns again, with no time passing."""
    up(core, 1000.0)
    core.arbiter.handle_hup()
    [stop] = core.runs()
    assert stop["event"] == "stop"
    core.arbiter.handle_hup()  # already down: nothing more
    assert core.runs() == []


def test_sighup_while_start_runs_hands_stop_over_when_start_ends(core: Core) -> None:
    core.trigger(core.sensors[0])
    [start] = core.runs()
    core.arbiter.handle_hup()
    assert core.runs() == []  # one command at a time
    core.done(start)
    assert [r["event"] for r in core.runs()] == ["stop"]


def test_a_failed_start_with_retry_start_is_standby_and_rearms_later(tmp_path: Path) -> None:
    core = Core(tmp_path, retry_start=30.0)
    core.ready()
    s = core.sensors[0]
    core.at(1000.0).trigger(s)
    [start] = core.runs()
    core.at(1001.0).done(start, rc=1)
    assert [e.outcome.ok for e in core.seen.of(CommandEnded)] == [False]
    assert not core.service.machine.up and s.verbs() == []
    core.at(1031.0 - EPSILON).turn()
    assert s.verbs() == []
    core.at(1031.0).turn()
    assert s.verbs() == ["arm"] and core.runs() == []  # no stop after a failed start


# -- workers: silence, death, start-up -------------------------------------------------------


def test_a_silent_worker_is_killed_after_its_silent_beats_and_replaced(core: Core) -> None:
    a, b = core.sensors
    beat = core.cfg.beat
    for t in range(1, SILENT_BEATS):  # b and the executor talk; a says nothing more
        core.at(1000.0 + t * beat)
        beat_all(core, core.executor, b)
    core.at(1000.0 + SILENT_BEATS * beat - EPSILON).turn()
    assert not a.killed
    core.at(1000.0 + SILENT_BEATS * beat).turn()
    assert a.killed == ["was silent"] and not b.killed
    old = a.pid
    killed_at = core.now
    core.exited(a)
    first = Backoff().first
    core.at(killed_at + first - EPSILON).turn()
    assert not a.alive
    core.at(killed_at + first).turn()
    assert a.alive and a.pid != old and a.verbs() == ["config"]


def test_a_replaced_sensor_counts_at_once_while_up(core: Core) -> None:
    _, b = core.sensors
    up(core, 1000.0)
    core.exited(b)
    core.at(1000.0 + Backoff().first).turn()
    b.orders()
    b.say("hello", pid=b.pid)
    core.turn()
    assert b.verbs() == ["count"] and b.mode is wire.Mode.COUNTING


def test_a_sensor_that_never_says_hello_fails_the_start(tmp_path: Path) -> None:
    core = Core(tmp_path, beat=1.0)  # silent after HELLO_GRACE, before STARTUP_GRACE
    s = core.sensors[0]
    core.executor.say("hello", pid=core.executor.pid)
    core.turn()
    core.at(1000.0 + HELLO_GRACE - EPSILON)
    beat_all(core, core.executor)
    assert not s.killed
    core.at(1000.0 + HELLO_GRACE)
    beat_all(core, core.executor)
    assert s.killed == ["was silent"] and not core.executor.killed
    with pytest.raises(StartupError, match=r"the sensor nflog 1 \(pid \d+\) .* while starting"):
        core.exited(s)


def test_the_start_fails_when_not_every_worker_said_hello_in_the_grace(tmp_path: Path) -> None:
    core = Core(tmp_path)  # its beat is long: no one is silent within the grace
    core.at(1000.0 + STARTUP_GRACE).turn()
    with pytest.raises(StartupError, match="no hello from the executor, sensor nflog 1"):
        core.at(1000.0 + STARTUP_GRACE + EPSILON).turn()


def test_sigterm_keeps_the_running_command_and_drops_the_queued_one(core: Core) -> None:
    core.trigger(core.sensors[0])
    [start] = core.runs()
    core.arbiter.handle_hup()  # a stop waits behind the start
    core.arbiter.handle_term()
    assert all(s.sock is None for s in core.sensors)  # EOF: they exit
    core.done(start)
    assert core.executor.verbs() == ["quit"]  # not the stop
    core.arbiter.handle_term()  # again: the running command's executor is told
    assert core.executor.signals == [signal.SIGTERM]


def test_an_executor_lost_while_idle_is_replaced_and_the_state_kept(core: Core) -> None:
    start = up(core, 1000.0)
    assert start["event"] == "start"
    core.exited(core.executor, EXITED)
    assert core.seen.of(CommandEnded)[-1].event == "start"  # no new end: none was running
    core.at(1000.0 + Backoff().first).turn()
    assert core.executor.alive and core.executor.verbs() == ["config"]
    core.executor.say("hello", pid=core.executor.pid)
    core.turn()
    assert core.service.machine.up and core.runs() == []


def test_modes_are_the_workers_own(core: Core) -> None:
    a, _ = core.sensors
    modes = []
    for said in ("waiting for interface", "armed"):
        a.say("beat", n=0, mode=said)
        core.turn()
        modes.append(a.mode)
    assert modes == [wire.Mode.LOST, wire.Mode.ARMED]
    core.executor.say("beat", n=0, mode="armed")  # a sensor's mode from the executor
    core.turn()
    assert core.executor.killed == [BAD]

