"""Under systemd, stderr is the journal: each line starts with its sd-daemon
``<N>`` priority prefix, so ``journalctl -p warning`` shows the warnings.

systemd tells a service through JOURNAL_STREAM=``device:inode`` of the
stream it connected; here the daemon's stderr is a file and JOURNAL_STREAM
names that file, which is what the daemon checks. When JOURNAL_STREAM names
something else (stderr redirected), the lines are unchanged. Last, a real
systemd-journald (in a mount namespace of its own) receives the daemon's
stderr, and ``journalctl -p warning`` shows the warning alone.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import Daemon, Netns, events, ready, recorder, wait_for, workers
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.58.0.1", dst="10.58.0.2") / UDP(sport=4000, dport=5353))
WARNING = "Warning! Executable command doesn't return 0 code"


def run_once(veth: Netns, tmp_path: Path, start: Callable[..., Daemon], *args: str
             ) -> list[str]:
    """Start, one trigger, a stop command that fails (a warning), stop: the log."""
    script, record = recorder(tmp_path, body='[ "$1" = stop ] && exit 1; exit 0')
    d = start(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1", "--beat",
              str(BEAT), *args)
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


STAMP = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} "


def test_timestamps_begin_every_line_on_request(
        veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    """--timestamps: each line begins with the local time, then the
    original's line unchanged; in the order they were written."""
    lines = run_once(veth, tmp_path, start_daemon, "--timestamps")
    assert lines, "no log lines"
    for line in lines:
        assert re.match(STAMP, line), line
    plain = [line[24:] for line in lines]
    assert re.fullmatch(r"Started with pid \d+", plain[0]), plain[0]
    assert "CORE: executing STOP command..." in plain
    assert any(line.startswith(WARNING) for line in plain), plain
    assert [line[:23] for line in lines] == sorted(line[:23] for line in lines)


def test_no_timestamps_by_default_nor_on_the_journal(
        veth: Netns, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        start_daemon: Callable[..., Daemon]) -> None:
    """The original's lines by default; on the journal --timestamps adds
    nothing (journald stamps each line), the priority prefix stays."""
    lines = run_once(veth, tmp_path, start_daemon)
    assert lines[0].startswith("Started with pid"), lines[0]
    assert not [line for line in lines if re.match(STAMP, line)]
    log = tmp_path / "daemon1.log"  # the file start_daemon's second daemon writes
    log.touch()
    st = os.stat(log)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    (tmp_path / "again").mkdir()  # a record of its own for the second daemon's commands
    journal = run_once(veth, tmp_path / "again", start_daemon, "--timestamps")
    assert journal[0].startswith("<6>Started with pid"), journal[0]
    assert not [line for line in journal if re.search(STAMP, line)]


@pytest.fixture
def journald() -> Iterator[Path]:
    """A real systemd-journald in a private mount namespace (its own /run): the
    root of that namespace, through which its sockets and files are reached."""
    binary = "/lib/systemd/systemd-journald"
    if not os.path.exists(binary):
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: needs systemd-journald (apt-get install systemd)")
        pytest.skip("needs systemd-journald (apt-get install systemd)")
    proc = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/journal /run/log"
         f" && exec {binary}"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    root = Path(f"/proc/{proc.pid}/root")
    try:
        wait_for("journald's stdout socket",
                 lambda: (root / "run/systemd/journal/stdout").is_socket()
                 or proc.poll() is not None)
        assert proc.poll() is None, "systemd-journald exited"
        yield root
    finally:
        proc.terminate()
        proc.wait(10)


def test_journalctl_priority_filter_shows_the_warnings(veth: Netns, tmp_path: Path,
                                                       journald: Path) -> None:
    """As under systemd: stderr is a stream to journald, JOURNAL_STREAM names
    it; ``journalctl -p warning`` then shows the warning and not the info lines."""
    ident = f"tuninetd-{uuid.uuid4().hex[:8]}"
    stream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stream.connect(str(journald / "run/systemd/journal/stdout"))
    # identifier, unit, default priority, level prefix on, no syslog/kmsg/console
    stream.sendall(f"{ident}\n\n6\n1\n0\n0\n0\n".encode())
    st = os.fstat(stream.fileno())
    script, record = recorder(tmp_path, body='[ "$1" = stop ] && exit 1; exit 0')
    daemon = subprocess.Popen(
        veth.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main", "-i", "tap0", "-f",
                       "udp", "-c", str(script), "-t", "1", "--beat", str(BEAT),
                       "--control", str(tmp_path / "ctl.sock")),
        stdin=subprocess.DEVNULL, stdout=stream.fileno(), stderr=stream.fileno(),
        env={**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"})
    stream.close()
    journal = str(journald / "run/log/journal")

    def journalctl(priority: str) -> list[str]:
        r = subprocess.run(["journalctl", "-D", journal, "--no-pager", "-o", "cat", "-t", ident,
                            "-p", priority], capture_output=True, text=True, timeout=30)
        return r.stdout.splitlines()

    try:
        wait_for("the daemon binding", lambda: "Binding to interface tap0" in journalctl("info"),
                 20)
        wait_for("the sensor armed",
                 lambda: any("armed" in t for t in workers(daemon.pid).values()), 20)
        veth.sender().send(FRAME)
        wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
        wait_for("the warning in journalctl -p warning",
                 lambda: any(line.startswith(WARNING) for line in journalctl("warning")))
    finally:
        daemon.terminate()
        daemon.wait(30)
    warnings = journalctl("warning")
    # Info lines stay out (another warning, e.g. the executor's note that it
    # has no cgroup where none is mounted, may be there).
    info = ("Started with pid", "Binding to interface", "PCAP: start command done",
            "CORE: executing STOP command")
    assert not [line for line in warnings if line.startswith(info)], warnings
    everything = journalctl("info")
    assert any(line.startswith("Started with pid") for line in everything), everything
    assert not [line for line in everything if re.match(r"<\d>", line)], everything
