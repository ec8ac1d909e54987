"""A compromised sensor against the real supervisor (tests/support/fake_sensor.py):
what it sends may lie about a packet, but it cannot write the daemon's log
lines, put text into the root-run command's environment, or flood the log.

The command records its whole environment (``env``); the log is the
supervisor's stderr. Every attack is sent on the sensor's socketpair as a
compromised sensor would, after the privilege drop.
"""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

from tests.support.fake_sensor_harness import FakeSensors, Plan
from tests.support.garbage import obj
from tests.support.netlab import gone, kinds, need_root, wait_for
from tests.support.timing import BEAT
from tuninetd.supervisor import allowance
from tuninetd.supervisor.ops import client

BAD = re.compile(r"CORE: sensor nflog 1 sent a bad message \((.*)\): killing it")
WINDOW = f"{allowance.WINDOW_BEATS * BEAT:g} s"
# Why each flood is cut short, and how many of its records reach the log first.
CUT = {"errors": "error after a fatal error",
       "mode changes": f"more than {allowance.MODES} mode changes in {WINDOW}",
       "messages": f"more than {allowance.MESSAGES} messages in {WINDOW}"}
LOGGED = {"errors": 1, "mode changes": allowance.MODES, "messages": 0}
INJECTED = ("$(touch", "`id`", "reboot", "-rf /", "\x1b", "\x07")


def forged_triggers() -> list[tuple[str, bytes]]:
    """(what it tries, the record): each is refused at the schema or by the facts check."""
    ip = {"ip": 4, "src": "192.0.2.1", "dst": "192.0.2.2", "proto": 6}
    return [
        ("shell in src", obj("trigger", link="raw", **{**ip, "src": "$(touch /etc/x)`id`;reboot"})),
        ("text as proto", obj("trigger", link="raw", **{**ip, "proto": "-rf /"})),
        ("a forged log line", obj("trigger", link="raw", lines=["Started with pid 1"], **ip)),
        ("a line break in dst", obj("trigger", link="raw",
                                    **{**ip, "dst": "192.0.2.2\nStarted with pid 1"})),
        ("an IPv6 scope id", obj("trigger", link="raw",
                                 **{**ip, "ip": 6, "src": "fe80::1%$(reboot)", "dst": "::1"})),
        ("a MAC with an escape", obj("trigger", link="ether", mac_src="\x1b[2J",
                                     mac_dst="02:00:00:00:00:02", ethertype=0x0800, **ip)),
    ]


def test_forged_trigger_text_reaches_neither_log_nor_command(tmp_path: Path) -> None:
    need_root()  # the fake sensor drops privileges the way the real ones do
    env_log = tmp_path / "env.log"
    fake = FakeSensors(tmp_path, command_body=f"env >> {env_log}")
    try:
        # Started (a bad message while starting aborts the start), then the
        # sensor is replaced by the attacker.
        first = fake.next_sensor(Plan(True, [], hangup=False).json())
        wait_for("started", lambda: client.query(str(tmp_path / "status.sock"))["state"] == "down")
        os.kill(first, signal.SIGKILL)
        for what, record in forged_triggers():
            before = len(fake.lines())
            pid = fake.next_sensor(Plan(True, [record], hangup=False).json())
            wait_for(f"{what}: the fake sensor {pid} killed",
                     lambda pid=pid: gone(pid), 5, every=0.01)  # type: ignore[misc]
            wait_for(f"{what}: the kill logged", lambda before=before: any(  # type: ignore[misc]
                BAD.fullmatch(x) for x in fake.lines()[before:]), 5)
            assert kinds(fake.record) == [], what  # no start ran
        # A trigger with true facts and a prefix full of line breaks and
        # escape sequences: taken, worded on one line, the escapes shown escaped.
        prefix = "a\nStarted with pid 1\r\x1b[2J\x1b]0;owned\x07\"\\"
        pid = fake.next_sensor(Plan(True, [obj(
            "trigger", link="raw", ip=4, src="192.0.2.1", dst="192.0.2.2", proto=6,
            prefix=prefix)], hangup=False).json())
        wait_for("the start", lambda: kinds(fake.record) == ["start"])
        wait_for("NFLOG: start command done", lambda: "NFLOG: start command done" in fake.lines())
        fake.alive()
        log = fake.log.read_bytes()
        lines = fake.lines()
        assert '|- NFLOG prefix: "a\\x0aStarted with pid 1\\x0d\\x1b[2J\\x1b]0;owned\\x07\\"\\\\"' \
            in lines, lines
        assert "|- IPv4 192.0.2.1 > 192.0.2.2, NXT_HDR: 0x06 (TCP)" in lines
        assert not any(x.startswith("Started with pid") for x in lines), lines
        assert not any(bad.encode() in log for bad in INJECTED), log
        assert all(0x20 <= b < 0x7F or b == 0x0A for b in log), log
        env = env_log.read_text()
        assert "TUNINETD_SRC=192.0.2.1\n" in env and "TUNINETD_PROTO=TCP\n" in env, env
        assert not any(bad in env for bad in INJECTED), env
        reasons = [m.group(1) for x in lines if (m := BAD.fullmatch(x))]
        print(f"\n[figure] {len(reasons)} forged triggers, each sensor killed: {reasons}")
        assert len(reasons) == len(forged_triggers())
    finally:
        fake.stop()



def flood(kind: str, n: int) -> list[bytes]:
    """``n`` records that each would be fine once."""
    if kind == "errors":
        return [obj("error", reason=f"flood {i}", fatal=False) for i in range(n)]
    if kind == "mode changes":
        modes = ("waiting for interface", "counting")
        return [obj("beat", n=0, mode=modes[i % 2]) for i in range(n)]
    return [obj("beat", n=0, mode="counting") for i in range(n)]


def test_a_flooding_sensor_is_killed_and_the_log_stays_short(tmp_path: Path) -> None:
    need_root()
    fake = FakeSensors(tmp_path)
    control = str(tmp_path / "status.sock")
    try:
        first = fake.next_sensor(Plan(True, [], hangup=False).json())
        wait_for("started", lambda: client.query(control)["state"] == "down")
        os.kill(first, signal.SIGKILL)
        # Its death is logged before the first flood's lines are counted.
        wait_for("the first fake's end logged",
                 lambda: any(f"(pid {first}) killed by signal 9" in x for x in fake.lines()))
        figures = []
        for what in ("errors", "mode changes", "messages"):
            before = len(fake.lines())
            pid = fake.next_sensor(Plan(True, flood(what, 40_000), hangup=False).json())
            answered = []
            while not gone(pid):  # the supervisor answers while the flood lasts
                t0 = time.monotonic()
                assert client.query(control, timeout=2.0)["state"] == "down"
                answered.append(time.monotonic() - t0)
            wait_for(f"the {what} flooder's restart logged", lambda pid=pid: any(  # type: ignore[misc]
                f"(pid {pid})" in x and "restarting it" in x for x in fake.lines()), 5)
            new = fake.lines()[before:]
            said = [m.group(1) for x in new if (m := BAD.fullmatch(x))]
            assert said == [CUT[what]], new
            # What it was allowed to log, the kill, the restart, the replacement's hello.
            assert len(new) == LOGGED[what] + 3, new
            figures.append(f"{what}: {len(new)} log lines, status answered {len(answered)} "
                           f"times while it flooded (slowest {max(answered, default=0):.3f} s)")
            fake.alive()
        assert kinds(fake.record) == []
        print("\n[figure] 40,000 records per flooding sensor; " + "; ".join(figures))
    finally:
        fake.stop()


TRIGGER = obj("trigger", link="raw", ip=4, src="192.0.2.1", dst="192.0.2.2", proto=17)
BEAT_ = obj("beat", n=0, mode="counting")
# The sensor contract's rules (SENSOR_PERMITS in common/wire.py), each broken
# by a sensor that keeps every other rule: (rule, says hello, its records,
# the reason logged).
BROKEN_RULES = [
    ("hello comes first", False, [BEAT_], "beat before hello"),
    ("hello comes once", True, [BEAT_, obj("hello", pid=1)], "hello again"),
    ("an error is the last word", True, [obj("error", reason="gone", fatal=True), BEAT_],
     "beat after a fatal error"),
    ("one error only", True, [obj("error", reason="gone", fatal=True),
                              obj("error", reason="again", fatal=True)],
     "error after a fatal error"),
    ("a trigger only while armed", True, [TRIGGER, BEAT_, TRIGGER], "trigger while not armed"),
]


def test_a_sensor_breaking_a_rule_of_the_contract_is_killed(tmp_path: Path) -> None:
    need_root()  # the fake sensor drops privileges the way the real ones do
    fake = FakeSensors(tmp_path)
    try:
        first = fake.next_sensor(Plan(True, [], hangup=False).json())
        wait_for("started", lambda: client.query(str(tmp_path / "status.sock"))["state"] == "down")
        os.kill(first, signal.SIGKILL)
        for rule, hello, records, reason in BROKEN_RULES:
            before = len(fake.lines())
            pid = fake.next_sensor(Plan(hello, records, hangup=False).json())
            wait_for(f"{rule}: the fake sensor {pid} killed",
                     lambda pid=pid: gone(pid), 5, every=0.01)  # type: ignore[misc]
            said = wait_for(f"{rule}: the kill logged", lambda before=before: [  # type: ignore[misc]
                m.group(1) for x in fake.lines()[before:] if (m := BAD.fullmatch(x))], 5)
            assert said == [reason], (rule, said)
        # The trigger that was in place fired the start: only the second was refused.
        wait_for("the start", lambda: kinds(fake.record) == ["start"])
        fake.alive()
    finally:
        fake.stop()
