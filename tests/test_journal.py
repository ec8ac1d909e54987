"""Under systemd, stderr is the journal: each line starts with its sd-daemon
``<N>`` priority prefix, so ``journalctl -p warning`` shows the warnings.

systemd tells a service through JOURNAL_STREAM=``device:inode`` of the
stream it connected; here the daemon's stderr is a file and JOURNAL_STREAM
names that file, which is what the daemon checks. When JOURNAL_STREAM names
something else (stderr redirected), the lines are unchanged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.netlab import Daemon, Netns, events, ready, recorder, wait_for

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.58.0.1", dst="10.58.0.2") / UDP(sport=4000, dport=5353))
WARNING = "Warning! Executable command doesn't return 0 code"


def run_once(veth: Netns, tmp_path: Path, start: Callable[..., Daemon]) -> list[str]:
    """Start, one trigger, a stop command that fails (a warning), stop: the log."""
    script, record = recorder(tmp_path, body='[ "$1" = stop ] && exit 1; exit 0')
    d = start(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1", "--beat", "0.2")
    ready(d)
    veth.sender().send(FRAME)
    wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    d.wait_log(WARNING)
    assert d.stop() == 0
    return d.lines()


def test_lines_carry_their_priority_when_stderr_is_the_journal(
        veth: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        start_daemon: Callable[..., Daemon]) -> None:
    log = tmp_path / "daemon0.log"  # the file start_daemon's first daemon writes
    log.touch()
    st = os.stat(log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    lines = run_once(veth, tmp_path, start_daemon)
    assert lines, "no log lines"
    for line in lines:
        assert re.match(r"<[0-7]>", line), line
    warnings = [line for line in lines if WARNING in line]
    assert len(warnings) == 1 and warnings[0].startswith(f"<4>{WARNING}"), warnings
    assert next(line for line in lines if "Started with pid" in line).startswith("<6>")
    assert any(line.startswith("<6>CORE: executing STOP command...") for line in lines)


def test_lines_are_unchanged_when_stderr_is_not_the_journal(
        veth: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        start_daemon: Callable[..., Daemon]) -> None:
    other = os.stat(tmp_path)  # inherited from a unit, but stderr was redirected
    monkeypatch.setenv("JOURNAL_STREAM", f"{other.st_dev}:{other.st_ino}")
    lines = run_once(veth, tmp_path, start_daemon)
    assert any(line.startswith(WARNING) for line in lines), lines
    assert not [line for line in lines if re.match(r"<\d>", line)]
