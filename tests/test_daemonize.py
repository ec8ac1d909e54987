"""-d: detach, log to syslog as ``tuninetd`` (facility daemon), and report a
failed start with exit status 1 instead of dying silently in the background.

The syslog side is a datagram socket this test binds, seen as /dev/log by
the daemon in a private mount namespace (tests/support/syslogd.py): what the daemon's
libc sends there is read back byte for byte.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import (
    Daemon,
    Netns,
    events,
    forget_name,
    gone,
    ready,
    recorder,
    wait_for,
)
from tests.support.syslogd import LOG_DAEMON, LOG_INFO, Syslog, private_dev, private_dev_log
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src="10.66.0.1", dst="10.66.0.2")
    / UDP(sport=4000, dport=5353)
)


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[tuple[Syslog, list[str]]]:
    """The receiver, and the argv prefix that runs a command seeing it as /dev/log."""
    with private_dev_log(tmp_path, "tuninetd") as receiver_and_prefix:
        yield receiver_and_prefix


def daemon_pids(ns: Netns) -> list[int]:
    def name(pid: int) -> str:
        try:
            return psutil.Process(pid).name()
        except psutil.NoSuchProcess:  # it exited since the namespace was listed
            return ""

    return [p for p in ns.pids() if name(p) == "tuninetd"]


def test_detaches_logs_to_syslog_and_exits_cleanly(
    veth: Netns, tmp_path: Path, syslog: tuple[Syslog, list[str]]
) -> None:
    log, prefix = syslog
    script, record = recorder(tmp_path)
    argv = [*prefix, *veth.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main",
            "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1", "--beat", str(BEAT), "-d",
            "--control", str(tmp_path / "control.sock"))]
    parent = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    # The parent returns once every worker has said hello.
    assert parent.returncode == 0, parent.stderr
    assert parent.stderr == ""
    pri, pid, _ = log.wait("Success! Tuninetd has been started with PID:")
    assert pri == LOG_DAEMON | LOG_INFO
    assert daemon_pids(veth) == [pid]
    daemon = psutil.Process(pid)
    assert daemon.cwd() == "/"
    assert os.getsid(pid) != os.getsid(0)
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"
    workers = [c.pid for c in daemon.children()]
    assert {psutil.Process(w).name() for w in workers} == {"tuninetd-exec", "tuninetd-pcap"}
    log.wait("Binding to interface tap0")

    veth.sender().send(FRAME)
    log.wait("PCAP: start command done")
    log.wait("|- IPv4 10.66.0.1 > 10.66.0.2, NXT_HDR: 0x11 (UDP)")
    log.wait("CORE: executing STOP command...")
    wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    assert {r[1] for r in log.poll()} == {pid}

    os.kill(pid, signal.SIGTERM)
    wait_for("daemon and workers gone", lambda: all(gone(p) for p in (pid, *workers)))


def test_a_failed_start_is_reported_by_the_parent(
    netns: Netns, tmp_path: Path, syslog: tuple[Syslog, list[str]],
    start_daemon: Callable[..., Daemon],
) -> None:
    """A sensor that cannot start (here: an NFLOG group another process holds)
    makes `tuninetd -d` exit 1 with the reason, not 0 and a silent death."""
    log, prefix = syslog
    script, _ = recorder(tmp_path)
    holder = start_daemon(netns, "-n", "31", "-c", str(script), "--beat", str(BEAT))
    # Its sensor has said hello, so it holds the group (a log line before the
    # spawn would race the sensor's bind).
    ready(holder)
    argv = [*prefix, *netns.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main",
            "-n", "31", "-c", str(script), "-d", "--control", str(tmp_path / "second.sock"))]
    second = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert second.returncode == 1
    lines = second.stderr.splitlines()
    assert len(lines) == 1 and "group 31" in lines[0] and "another process" in lines[0]
    log.wait("Abort")
    assert not [r for r in log.poll() if "Success!" in r[2]], log.poll()
    assert daemon_pids(netns) == [holder.pid]


def test_no_syslog_socket_is_said_on_stderr_before_detaching(netns: Netns,
                                                             tmp_path: Path) -> None:
    """Without /dev/log every line of a -d daemon would be dropped in silence
    (libc's syslog says nothing): refuse with exit 1 and the reason, and
    start nothing. /dev here is a private one with no log socket in it."""
    script, _ = recorder(tmp_path)
    argv = [*private_dev(tmp_path), *netns.exec_argv(
        sys.executable, "-m", "tuninetd.supervisor.main", "-n", "32", "-c", str(script), "-d",
        "--control", str(tmp_path / "c.sock"))]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1, r.stderr
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        "tuninetd: -d logs to syslog, but nothing listens on /dev/log (no such file or "
        "directory): start a syslog daemon (e.g. rsyslog), or run in the foreground (under "
        "systemd the journal keeps the lines)"]
    assert daemon_pids(netns) == []
    assert not (tmp_path / "c.sock").exists()


def test_the_daemon_runs_on_when_the_waiting_parent_is_gone(
    veth: Netns, tmp_path: Path, syslog: tuple[Syslog, list[str]]
) -> None:
    """The `tuninetd -d` that waits for the start is killed (an interrupted
    shell) before the workers said hello: the daemon's "ok" finds no reader.
    It says so and runs on, instead of dying of the broken pipe."""
    log, prefix = syslog
    script, record = recorder(tmp_path)
    name = f"test-{uuid.uuid4().hex[:12]}"
    argv = [*prefix, *veth.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main",
            "-i", "tap0", "-f", "udp", "-c", str(script), "-d", "--name", name,
            "--control", str(tmp_path / "control.sock"))]
    try:
        # The daemon is caught (SIGSTOP) before it answers; a machine fast
        # enough to answer first gets another try.
        for _ in range(5):
            if (caught := stopped_before_it_answers(argv, veth)) is not None:
                break
        else:
            pytest.fail("the daemon answered its parent before it could be stopped, 5 times")
        parent, pid = caught
        parent.kill()
        parent.wait()
        os.kill(pid, signal.SIGCONT)
        log.wait("CORE: the tuninetd -d that waited for this start is gone (Broken pipe); "
                 "running on")
        log.wait("Success! Tuninetd has been started with PID:")
        veth.sender().send(FRAME)
        log.wait("PCAP: start command done")
        assert [e[0] for e in events(record)] == ["start"]
        assert not gone(pid)
    finally:
        for p in daemon_pids(veth):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGTERM)
        wait_for("daemon gone", lambda: not daemon_pids(veth))
        forget_name(name)


def stopped_before_it_answers(argv: list[str],
                              ns: Netns) -> tuple[subprocess.Popen[bytes], int] | None:
    """`tuninetd -d` started, its daemon stopped (SIGSTOP) as soon as it is
    there: the parent, still waiting, and the daemon's pid; None: the daemon
    had answered already (it is gone again)."""
    parent = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    pid = wait_for("the detached daemon", lambda: detached(ns, parent.pid), every=0.001)
    os.kill(pid, signal.SIGSTOP)
    if parent.poll() is None:
        return parent, pid
    os.kill(pid, signal.SIGCONT)
    os.kill(pid, signal.SIGTERM)
    wait_for("that daemon gone", lambda: gone(pid))
    return None


def detached(ns: Netns, parent: int) -> int | None:
    """The daemon that ``parent`` (tuninetd -d) forked twice: the process
    of the namespace whose own parent is not there (it left its session)."""
    pids = set(ns.pids())
    for pid in pids - {parent}:
        try:
            if psutil.Process(pid).ppid() not in pids:
                return pid
        except psutil.Error:
            continue
    return None
