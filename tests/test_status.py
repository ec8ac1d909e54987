"""The control socket and ``tuninetd status``, against a real daemon in a
throwaway namespace: the human and the JSON output after a real start and
stop, exit status 3 with no daemon (nothing there, or a stale socket), 4 for
an unprivileged caller (a forked child of this test that dropped to nobody),
a second daemon refused on the same socket, a stale one replaced, and
clients that misbehave without stalling the daemon.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import (
    Daemon,
    Netns,
    as_nobody,
    default_sensor_account,
    events,
    ready,
    recorder,
    wait_for,
    worker,
)
from tests.support.stand_in_daemon import answer
from tests.support.timing import BEAT
from tuninetd.supervisor.ops import client

pytestmark = pytest.mark.root

FRAME = bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
              / IP(src="10.55.0.1", dst="10.55.0.2") / UDP(sport=4000, dport=5353))
KEYS = {"name", "pid", "state", "ttl", "idle_seconds", "last_trigger", "commands", "processes"}
PROCESS_KEYS = {"role", "pid", "user", "state", "restarts", "cpu_percent", "rss_bytes"}


def run_status(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "status", *args],
                          capture_output=True, text=True, timeout=20)


def status_as_nobody(path: str) -> tuple[int, str]:
    return as_nobody(lambda: client.main("status", ["--control", path]))


def query(path: Path) -> dict[str, Any]:
    r = run_status("--json", "--control", str(path))
    assert r.returncode == 0, r.stderr
    records = json.loads(r.stdout)
    assert isinstance(records, list) and len(records) == 1, records
    record: dict[str, Any] = records[0]
    return record


def start(start_daemon: Callable[..., Daemon], ns: Netns, control: Path, script: Path,
          *extra: str) -> Daemon:
    d: Daemon = start_daemon(ns, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1",
                             "--beat", str(BEAT), "--control", str(control), *extra)
    ready(d)
    return d


def test_status_of_a_real_daemon(veth: Netns, tmp_path: Path, sockdir: Path,
                                 start_daemon: Callable[..., Daemon]) -> None:
    control = sockdir / "tuninetd.sock"
    script, record = recorder(tmp_path, body='[ "$1" = stop ] && exit 3; exit 0')
    d = start(start_daemon, veth, control, script)
    st = os.stat(control)
    assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
    assert st.st_uid == 0

    before = query(control)
    assert before.keys() >= KEYS
    assert before["state"] == "down" and before["ttl"] == 1
    assert before["idle_seconds"] is None and before["last_trigger"] is None
    assert before["commands"]["starts"] == before["commands"]["stops"] == 0
    procs = {p["role"]: p for p in before["processes"]}
    assert set(procs) == {"supervisor", "executor", "pcap:tap0"}
    sensor = worker(d, "tuninetd: sensor pcap tap0")
    assert procs["supervisor"]["pid"] == d.pid
    assert procs["executor"]["pid"] == worker(d, "tuninetd: executor")
    assert procs["pcap:tap0"]["pid"] == sensor
    for p in procs.values():
        assert p.keys() >= PROCESS_KEYS
        assert p["rss_bytes"] == pytest.approx(psutil.Process(p["pid"]).memory_info().rss,
                                                rel=0.5)
        assert 0 <= p["cpu_percent"] <= 400 and p["restarts"] == 0
    assert procs["pcap:tap0"]["user"] == default_sensor_account().pw_name
    assert procs["pcap:tap0"]["state"] == "armed"
    assert procs["supervisor"]["user"] == procs["executor"]["user"] == "root"

    sent = time.monotonic()
    veth.sender().send(FRAME)
    wait_for("start and stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])
    d.wait_log("Executable command doesn't return 0 code")
    after = query(control)
    assert after["state"] == "down"
    trigger = after["last_trigger"]
    assert trigger["sensor"] == "pcap:tap0"
    assert "|- IPv4 10.55.0.1 > 10.55.0.2, NXT_HDR: 0x11 (UDP)" in trigger["lines"]
    assert 0 <= after["idle_seconds"] <= time.monotonic() - sent
    commands = after["commands"]
    assert (commands["starts"], commands["stops"], commands["failed"]) == (1, 1, 1)
    assert commands["last"]["event"] == "stop"
    assert commands["last"]["result"] == "exit status 3" and commands["last"]["exit_code"] == 3

    human = run_status("--control", str(control))
    assert human.returncode == 0, human.stderr
    text = human.stdout
    assert text.startswith(f"{d.name}: down (tuninetd "), text
    assert f"pid {d.pid})" in text
    assert "1 start, 1 stop run, 1 failed" in text
    assert "stop: exit status 3" in text
    assert "|- IPv4 10.55.0.1 > 10.55.0.2" in text
    header = next(line for line in text.splitlines() if line.startswith("ROLE"))
    assert header.split() == ["ROLE", "PID", "USER", "STATE", "UPTIME", "RESTARTS", "CPU%",
                              "RSS"]
    rows = {line.split()[0]: line.split() for line in text.splitlines()
            if line.split() and line.split()[0] in procs}
    assert rows["pcap:tap0"][1:4] == [str(sensor),
                                      default_sensor_account().pw_name, "armed"]

    # Unprivileged: the 0600 socket refuses the connection.
    code, out = status_as_nobody(str(control))
    assert code == 4, out
    assert "permission denied" in out
    # Even when the mode lets it through, the daemon checks the caller's uid.
    control.chmod(0o666)
    code, out = status_as_nobody(str(control))
    assert code == 4, out
    assert "permission denied" in out
    control.chmod(0o600)

    d.stop()
    assert not control.exists(), "the control socket outlives the daemon"
    gone_ = run_status("--control", str(control))
    assert gone_.returncode == 3
    assert "no daemon running" in gone_.stderr


def test_second_daemon_refused_stale_socket_replaced(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    control = tmp_path / "ctl.sock"
    script, _ = recorder(tmp_path)
    # Nothing there yet: exit 3, one line.
    r = run_status("--control", str(control))
    assert r.returncode == 3 and r.stderr.count("\n") == 1 and "no daemon running" in r.stderr
    # A stale socket: a file nobody listens on (its daemon was SIGKILLed).
    stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    stale.bind(str(control))
    stale.close()
    r = run_status("--control", str(control))
    assert r.returncode == 3 and "stale" in r.stderr
    first = start(start_daemon, veth, control, script)
    assert query(control)["pid"] == first.pid

    second = subprocess.run(
        veth.exec_argv(sys.executable, "-m", "tuninetd.supervisor.main", "-n", "5", "-c",
                       str(script), "--control", str(control)),
        capture_output=True, text=True, timeout=20)
    assert second.returncode == 1, second.stderr
    assert f"control socket {control} is in use: another tuninetd is running" in second.stderr
    assert "Traceback" not in second.stderr
    assert query(control)["pid"] == first.pid, "the first daemon lost its socket"

    # Killed without a chance to clean up: the next one replaces the socket.
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    for p in veth.pids():
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)
    wait_for("the old workers gone", lambda: not veth.pids())
    assert control.exists()
    third = start(start_daemon, veth, control, script)
    assert query(control)["pid"] == third.pid


def test_misbehaving_clients_do_not_stall_the_daemon(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    control = tmp_path / "ctl.sock"
    script, record = recorder(tmp_path)
    d = start(start_daemon, veth, control, script)

    def connect() -> socket.socket:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(str(control))
        return s

    silent = connect()  # says nothing
    flood = connect()
    flood.sendall(b"x" * 1500)  # no newline, more than a request may be
    reply = flood.recv(4096)
    assert json.loads(reply) == {"error": "request too long"}
    garbage = connect()
    garbage.sendall(b"{\"cmd\": \"reboot\"}\n")
    assert "unknown request" in json.loads(garbage.recv(4096))["error"]
    # While the silent one hangs on, the daemon answers and works (that it
    # answers in the same pass, not at the silent one's deadline, is
    # tests/unit/test_serve.py's to show).
    assert client.query(str(control))["state"] == "down"
    veth.sender().send(FRAME)
    wait_for("start", lambda: [e[0] for e in events(record)][:1] == ["start"])
    # The silent client is dropped at its deadline (2 s); the 10 s here only
    # tells that from never.
    silent.settimeout(10)
    assert silent.recv(10) == b""
    for s in (silent, flood, garbage):
        s.close()
    assert d.proc.poll() is None


def test_no_daemon_and_usage() -> None:
    r = run_status("--control", "/nonexistent-dir/x.sock")
    assert r.returncode == 3 and "no daemon running" in r.stderr and r.stdout == ""
    r = run_status("--bogus")
    assert r.returncode == 2 and r.stderr.startswith("tuninetd status: ")


def test_json_and_text_renderings_agree_on_missing_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A daemon with nothing to report yet: what --json gives as null, the text
    gives as "-" (or says is missing), field by field."""
    executor = {"role": "executor", "pid": None, "user": None, "state": "restarting",
                "restarts": 2, "cpu_percent": None, "rss_bytes": None, "uptime_seconds": None}
    record = {"state": "starting", "ttl": 5, "idle_seconds": None, "last_trigger": None,
              "commands": {}, "processes": [executor]}
    path = tmp_path / "control.sock"
    server = answer(path, record, times=2)
    assert client.main("status", ["--json", "--control", str(path)]) == 0
    as_json = json.loads(capsys.readouterr().out)
    assert client.main("status", ["--control", str(path)]) == 0
    text = capsys.readouterr().out
    server.join(5)

    assert as_json == [record]  # every null kept as null
    assert "  idle:         no matching packet yet" in text.splitlines()
    assert "  last trigger: none yet" in text.splitlines()
    rows = [line.split() for line in text.splitlines()[-2:]]
    assert rows[0] == ["ROLE", "PID", "USER", "STATE", "UPTIME", "RESTARTS", "CPU%", "RSS"]
    columns = ["role", "pid", "user", "state", "uptime_seconds", "restarts", "cpu_percent",
               "rss_bytes"]
    for name, shown in zip(columns, rows[1], strict=True):
        value = as_json[0]["processes"][0][name]
        assert shown == ("-" if value is None else str(value)), (name, value, shown)
