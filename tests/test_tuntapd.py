"""tuntapd on real parts: tun and tap devices in a throwaway network namespace,
a route into the tun device, the real tuninetd with a pcap sensor on it,
packets sent from a socket in the namespace, syslog read back from a /dev/log
this test binds.

Every wait polls with a deadline; nothing sleeps to synchronise.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from tests.support.links import has_carrier, holders, link
from tests.support.netlab import (
    Daemon,
    Netns,
    events,
    gone,
    ready,
    recorder,
    send_udp,
    title,
    wait_for,
)
from tests.support.syslogd import LOG_DAEMON, LOG_INFO, Syslog, private_dev, private_dev_log
from tests.support.timing import BEAT
from tests.support.tuntapd import TUNTAPD, Tuntapd, console_script, run_tuntapd

ROUTED = "10.99.0.0/24"
OWN = "10.99.1.1"
TARGET = "10.99.0.5"


@pytest.fixture
def tuntapd(netns: Netns, tmp_path: Path) -> Iterator[Callable[..., Tuntapd]]:
    started: list[Tuntapd] = []

    def start(*args: str) -> Tuntapd:
        t = Tuntapd(netns, tmp_path / f"tuntapd{len(started)}.log", *args)
        started.append(t)
        return t

    yield start
    for t in started:
        t.stop(signal.SIGKILL)


def tx_stats(ns: Netns, dev: str) -> dict[str, int]:
    info = link(ns, dev)
    assert info is not None
    stats: dict[str, int] = info["stats64"]["tx"]
    return stats


# -- holding a tun device: carrier, routing, a pcap sensor sees the packets -------


@pytest.mark.root
def test_route_into_held_tun_reaches_a_pcap_sensor(
    netns: Netns, tmp_path: Path, tuntapd: Callable[..., Tuntapd],
    start_daemon: Callable[..., Daemon],
) -> None:
    holder = tuntapd("-i", "tun0")
    holder.wait_log("holding tun0 (mode tun), link set up")
    wait_for("tun0 with carrier", lambda: has_carrier(netns, "tun0"))
    info = link(netns, "tun0")
    assert info is not None and info["linkinfo"]["info_data"]["type"] == "tun", info
    assert holders(netns, "tun0") == [holder.proc.pid]

    netns.ip("addr", "add", f"{OWN}/32", "dev", "tun0")
    netns.ip("route", "add", ROUTED, "dev", "tun0")
    script, record = recorder(tmp_path)
    daemon = start_daemon(netns, "-i", "tun0", "-f", "udp", "-c", str(script), "--beat", str(BEAT))
    ready(daemon)

    send_udp(netns, TARGET, 5353)
    got = wait_for("the start event", lambda: events(record))
    assert got[0][0] == "start"
    assert got[0][2:] == ["pcap:tun0", OWN, TARGET, "UDP"], got
    daemon.wait_log("PCAP: start command done")
    daemon.wait_log(f"|- IPv4 {OWN} > {TARGET}, NXT_HDR: 0x11 (UDP)")

    # tuntapd drains the device: far more packets than its queue holds (500)
    # all leave, none is dropped for a full queue.
    queue = int(info["txqlen"])
    def read_at_least(n: int) -> Callable[[], bool]:
        return lambda: tx_stats(netns, "tun0")["packets"] >= n

    sent = 1
    for _ in range(6):
        send_udp(netns, TARGET, 5353, count=200)
        sent += 200
        wait_for(f"{sent} packets read from tun0", read_at_least(sent))
    assert sent > 2 * queue
    assert tx_stats(netns, "tun0")["dropped"] == 0
    holder.proc.send_signal(signal.SIGUSR1)
    line = holder.wait_log("SIGUSR1 caught")
    m = re.search(r"Holding tun0, mode tun, (\d+) packets discarded", line)
    assert m and int(m[1]) >= sent, line

    assert daemon.stop() == 0, daemon.text()
    assert holder.stop() == 0, holder.text()
    assert "SIGTERM caught. Releasing tun0 and shutting down..." in holder.text()
    wait_for("tun0 removed", lambda: link(netns, "tun0") is None)


@pytest.mark.root
def test_sigterm_releases_a_device_it_created(
    netns: Netns, tuntapd: Callable[..., Tuntapd]
) -> None:
    holder = tuntapd("-i", "tun7")
    holder.wait_log("holding tun7")
    wait_for("tun7 with carrier", lambda: has_carrier(netns, "tun7"))
    assert holder.stop(signal.SIGTERM) == 0, holder.text()
    # Not persistent: the device goes with its last holder.
    assert link(netns, "tun7") is None


@pytest.mark.root
def test_tap_mode_attaches_to_a_persistent_device_and_leaves_it(
    netns: Netns, tuntapd: Callable[..., Tuntapd]
) -> None:
    netns.ip("tuntap", "add", "tap1", "mode", "tap")
    netns.ip("link", "set", "tap1", "up")
    info = link(netns, "tap1")
    assert info is not None and "NO-CARRIER" in info["flags"], info

    wrong = run_tuntapd(netns, "-i", "tap1", "-m", "tun")
    assert wrong.returncode == 1
    assert wrong.stderr == "tuntapd: tap1 is a tap device, not tun (use -m tap)\n"

    holder = tuntapd("-i", "tap1", "-m", "tap")
    line = holder.wait_log("holding tap1 (mode tap)")
    assert "link set up" not in line  # it was up already
    wait_for("tap1 with carrier", lambda: has_carrier(netns, "tap1"))
    info = link(netns, "tap1")
    assert info is not None and info["linkinfo"]["info_data"]["type"] == "tap", info
    assert info["link_type"] == "ether"

    assert holder.stop(signal.SIGINT) == 0, holder.text()
    assert "SIGINT caught. Releasing tap1" in holder.text()
    # Persistent: still there, without carrier again.
    info = link(netns, "tap1")
    assert info is not None and "NO-CARRIER" in info["flags"], info


@pytest.mark.root
def test_a_second_tuntapd_on_a_held_device_fails(
    netns: Netns, tuntapd: Callable[..., Tuntapd]
) -> None:
    first = tuntapd("-i", "tun0")
    first.wait_log("holding tun0")
    second = run_tuntapd(netns, "-i", "tun0")
    assert second.returncode == 1
    assert second.stdout == ""
    lines = second.stderr.splitlines()
    assert len(lines) == 1, second.stderr
    assert lines[0].startswith("tuntapd: tun0 is in use: another process holds it"), lines
    assert f"(pid {first.proc.pid} " in lines[0], lines
    # The first one is unaffected.
    assert first.proc.poll() is None
    assert has_carrier(netns, "tun0")


@pytest.mark.root
def test_a_device_deleted_under_it_ends_tuntapd(
    netns: Netns, tuntapd: Callable[..., Tuntapd]
) -> None:
    holder = tuntapd("-i", "tun3")
    holder.wait_log("holding tun3")
    netns.ip("link", "delete", "tun3")
    assert holder.proc.wait(10) == 1
    assert "tun3 has been deleted. Abort" in holder.text()


@pytest.mark.root
def test_other_devices_and_names_are_refused(netns: Netns) -> None:
    lo = run_tuntapd(netns, "-i", "lo")
    assert (lo.returncode, lo.stderr) == (1, "tuntapd: lo exists and is not a tun/tap device\n")


# -- bad usage: no device touched, no root needed --------------------------------


@pytest.mark.parametrize(("argv", "needle"), [
    (["-i", "tun0", "-m", "foo"], "bad mode 'foo': expected tun or tap"),
    ([], "-i <ifname> is required"),
    (["-m", "tap"], "-i <ifname> is required"),
    (["-i", "a" * 16], "is 16 bytes long, at most 15"),
    (["-i", "tun/0"], "not a valid interface name"),
    (["-i", ""], "expected an interface name"),
    (["-i", "tun0", "-x"], "unrecognized arguments: -x"),
    (["-i", "tun0", "--pidfile", "/nonexistent/t.pid"], "directory /nonexistent does not exist"),
])
def test_bad_usage_is_one_line_and_exit_2(argv: list[str], needle: str) -> None:
    out = subprocess.run([*TUNTAPD, *argv], capture_output=True, text=True, timeout=10)
    assert out.returncode == 2, out
    assert out.stdout == ""
    assert out.stderr.count("\n") == 1 and out.stderr.startswith("tuntapd: "), out.stderr
    assert needle in out.stderr, out.stderr


def test_help_and_version() -> None:
    out = subprocess.run([*TUNTAPD, "-h"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert "tuntapd -i <ifname> [-m tun|tap] [-d] [--pidfile PATH]" in out.stdout
    out = subprocess.run([*TUNTAPD, "-v"], capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stdout.startswith("tuntapd ")


# -- -d: detach, syslog ---------------------------------------------------------------


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[tuple[Syslog, list[str]]]:
    """The receiver, and the argv prefix that runs a command seeing it as /dev/log."""
    with private_dev_log(tmp_path, "tuntapd") as receiver_and_prefix:
        yield receiver_and_prefix


@pytest.mark.root
def test_detach_returns_at_once_and_the_daemon_holds_the_device(
    netns: Netns, syslog: tuple[Syslog, list[str]]
) -> None:
    log, prefix = syslog
    began = time.monotonic()
    parent = subprocess.run([*prefix, *netns.exec_argv(console_script(), "-i", "tun0", "-d")],
                            capture_output=True, text=True, timeout=10)
    took = time.monotonic() - began
    assert parent.returncode == 0, parent.stderr
    m = re.fullmatch(r"tuntapd: detached, daemon pid (\d+)\n", parent.stderr)
    assert m, parent.stderr
    assert took < 5, took
    pid = int(m[1])
    # By the time the parent has returned, the daemon holds the device.
    assert holders(netns, "tun0") == [pid]
    assert has_carrier(netns, "tun0")
    daemon = psutil.Process(pid)
    assert daemon.name() == "tuntapd"
    assert daemon.cwd() == "/"
    assert os.getsid(pid) != os.getsid(0)
    for fd in (0, 1, 2):
        assert os.readlink(f"/proc/{pid}/fd/{fd}") == "/dev/null"

    assert title(pid) == "tuntapd: tun0 tun"
    pri, logged_pid, _ = log.wait(f"holding tun0 (mode tun), link set up, pid {pid}")
    assert (pri, logged_pid) == (LOG_DAEMON | LOG_INFO, pid)
    os.kill(pid, signal.SIGUSR1)
    log.wait("SIGUSR1 caught. Holding tun0, mode tun")

    os.kill(pid, signal.SIGTERM)
    log.wait("SIGTERM caught. Releasing tun0 and shutting down...")
    wait_for("the daemon gone", lambda: gone(pid))
    wait_for("tun0 removed", lambda: link(netns, "tun0") is None)


@pytest.mark.root
def test_pidfile_and_title_name_the_holder_for_a_stop_script(
    netns: Netns, syslog: tuple[Syslog, list[str]], tmp_path: Path
) -> None:
    """-d returns once the pidfile names the daemon; its title says which
    device it holds; SIGTERM from the pidfile releases it and the file goes."""
    log, prefix = syslog
    path = tmp_path / "tuntapd-tun5.pid"
    parent = subprocess.run([*prefix, *netns.exec_argv(console_script(), "-i", "tun5", "-m",
                                                       "tap", "-d", "--pidfile", str(path))],
                            capture_output=True, text=True, timeout=30)
    assert parent.returncode == 0, parent.stderr
    pid = int(path.read_text())
    assert parent.stderr == f"tuntapd: detached, daemon pid {pid}\n"
    assert holders(netns, "tun5") == [pid]
    assert title(pid) == "tuntapd: tun5 tap"
    assert psutil.Process(pid).name() == "tuntapd"
    log.wait(f"holding tun5 (mode tap), link set up, pid {pid}")
    os.kill(pid, signal.SIGTERM)
    wait_for("the daemon gone", lambda: gone(pid))
    assert not path.exists()


@pytest.mark.root
def test_pidfile_in_the_foreground(
    netns: Netns, tuntapd: Callable[..., Tuntapd], tmp_path: Path
) -> None:
    path = tmp_path / "fg.pid"
    holder = tuntapd("-i", "tun6", "--pidfile", str(path))
    holder.wait_log("holding tun6")
    assert path.read_text() == f"{holder.proc.pid}\n"
    assert title(holder.proc.pid) == "tuntapd: tun6 tun"
    assert holder.stop(signal.SIGTERM) == 0, holder.text()
    assert not path.exists()


@pytest.mark.root
def test_detach_without_a_syslog_socket_is_refused_before_the_device(
    netns: Netns, tmp_path: Path
) -> None:
    """As tuninetd -d: without /dev/log every line would be lost in silence,
    so -d is refused with exit 1, before the device is made."""
    argv = [*private_dev(tmp_path), *netns.exec_argv(console_script(), "-i", "tun4", "-d")]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert (r.returncode, r.stdout) == (1, ""), r.stderr
    assert r.stderr.splitlines() == [
        "tuntapd: -d logs to syslog, but nothing listens on /dev/log (no such file or "
        "directory): start a syslog daemon (e.g. rsyslog), or run in the foreground (under "
        "systemd the journal keeps the lines)"]
    assert link(netns, "tun4") is None
