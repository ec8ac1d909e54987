"""State across restarts, failed starts and late interfaces, on real parts.

The start command launches a real background server (``python -m
http.server`` on an address of the test's namespace) and the stop command
stops it, as an on-demand service would. Each test names its interface
uniquely, so its daemon's state file (/run/tuninetd/<interface>.state) is
its own even with other tests running at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.links import has_carrier
from tests.support.netlab import (
    Daemon,
    Netns,
    events,
    forget_name,
    kinds,
    public_folder,
    recorder,
    send_udp,
    title,
    wait_for,
    worker,
)
from tests.support.timing import BEAT
from tests.support.tuntapd import Tuntapd
from tuninetd.supervisor.ops import client

pytestmark = pytest.mark.root

TTL = 2
SERVER = "10.77.0.1"
PORT = 8000
RESUMED = "CORE: resuming the up state of the previous run (started "
IGNORED = "CORE: no state of a previous run to resume from "


@dataclass
class OnDemandService:
    """An interface of the test's own name in a namespace, and a start/stop
    command that launches and stops a real server on an address there; the
    daemons run on that interface under that name."""

    ns: Netns
    folder: Path
    start_daemon: Callable[..., Daemon]
    ifname: str
    daemons: list[Daemon] = field(default_factory=list)

    @property
    def state_file(self) -> Path:
        return Path(f"/run/tuninetd/{self.ifname}.state")

    def add_interface(self) -> None:
        peer = "p" + self.ifname[1:]
        self.ns.add_veth(self.ifname, peer)
        self.ns.ip("addr", "add", f"{SERVER}/24", "dev", self.ifname)

    def script(self, name: str = "service.sh", fail_first_start: bool = False,
               fail_start: bool = False, body_first: str = "") -> tuple[Path, Path]:
        """start: launch the server (its pid in a file); stop: kill it.
        ``body_first`` runs before."""
        pidfile = self.folder / f"{name}.pid"
        failed = self.folder / f"{name}.failed"
        body = body_first
        if fail_start:
            body += '[ "$1" = start ] && exit 3\n'
        if fail_first_start:
            body += f'[ "$1" = start ] && [ ! -e {failed} ] && {{ touch {failed}; exit 3; }}\n'
        body += (
            'case "$1" in\n'
            f"start) setsid {sys.executable} -m http.server --bind {SERVER} {PORT} "
            f">/dev/null 2>&1 </dev/null & echo $! > {pidfile} ;;\n"
            f'stop) kill "$(cat {pidfile})" ;;\n'
            "esac\n"
        )
        return recorder(self.folder, name=name, body=body)

    def run(self, script: Path, *args: str) -> Daemon:
        # One name for every run: a restart resumes the state of its name.
        d = self.start_daemon(self.ns, "-i", self.ifname, "-f", "udp", "-c", str(script),
                              "--beat", str(BEAT), "-t", str(TTL), "--name", self.ifname,
                              *args)
        self.daemons.append(d)
        return d

    def send(self) -> None:
        sock = self.ns.sender("p" + self.ifname[1:])
        with sock:
            sock.send(bytes(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
                            / IP(src="10.77.0.9", dst=SERVER) / UDP(dport=9) / b"x"))

    def server_up(self) -> bool:
        with self.ns.entered():
            sock = socket.socket()
        with sock:
            sock.settimeout(1)
            return sock.connect_ex((SERVER, PORT)) == 0


@pytest.fixture
def service(netns: Netns, tmp_path: Path,
            start_daemon: Callable[..., Daemon]) -> Iterator[OnDemandService]:
    service = OnDemandService(netns, tmp_path, start_daemon, f"s{uuid.uuid4().hex[:8]}")
    yield service
    # What a daemon that exited up or was killed keeps for its next run: none here.
    for d in service.daemons:
        d.stop()
    forget_name(service.ifname)


def sensor(d: Daemon, ifname: str, state: str) -> int:
    """The pid of the sensor once it is in ``state`` and the executor is idle."""
    worker(d, f"tuninetd: executor {d.name}", "idle")
    return worker(d, f"tuninetd: sensor pcap {ifname}", state)


def up(service: OnDemandService, d: Daemon, record: Path) -> None:
    sensor(d, service.ifname, "armed")
    service.send()
    wait_for("start", lambda: kinds(record) == ["start"])
    d.wait_log("PCAP: start command done")
    wait_for("the server", service.server_up)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_a_restarted_daemon_resumes_up_and_stops_after_ttl(service: OnDemandService,
                                                            sig: int) -> None:
    service.add_interface()
    script, record = service.script()
    first = service.run(script)
    up(service, first, record)
    saved = wait_for("the state file up", lambda: (
        got if (got := json.loads(service.state_file.read_text()))["state"] == "up" else None))
    assert saved["sensor"] == f"pcap:{service.ifname}", saved
    assert os.stat(service.state_file).st_mode & 0o777 == 0o600

    first.proc.send_signal(sig)
    first.proc.wait(15)
    assert service.server_up(), "exiting without --stop-on-exit leaves the service running"
    launched = time.time()
    second = service.run(script)
    line = second.wait_log(RESUMED)[0]
    assert line.endswith("); start not run again"), line
    sensor(second, service.ifname, "counting")
    wait_for("status up", lambda: client.query(second.control)["state"] == "up")
    # No packet since the restart: the idle time is unknown, not the uptime.
    assert client.query(second.control)["idle_seconds"] is None

    got = wait_for("stop", lambda: kinds(record) == ["start", "stop"], timeout=TTL + 10)
    stopped = float(events(record)[1][1])
    print(f"stop {stopped - launched:.2f} s after the restart (ttl {TTL})")
    assert stopped - launched >= TTL, got
    wait_for("the server gone", lambda: not service.server_up())
    assert json.loads(service.state_file.read_text())["state"] == "down"
    assert [e[2] for e in events(record)] == [f"pcap:{service.ifname}"] * 2


def test_stop_on_exit_runs_stop_before_exiting(service: OnDemandService) -> None:
    service.add_interface()
    script, record = service.script()
    d = service.run(script, "--stop-on-exit")
    up(service, d, record)
    assert d.stop() == 0
    assert kinds(record) == ["start", "stop"]
    assert not service.server_up()
    assert "CORE: running stop before exiting (--stop-on-exit)" in d.text()
    assert not service.state_file.exists(), "an orderly exit while down leaves no state"
    again = service.run(script)
    sensor(again, service.ifname, "armed")
    assert RESUMED not in again.text()
    assert f"{IGNORED}{service.state_file} (there is none); starting down" in again.text()


def test_up_over_the_control_socket_is_resumed_too(service: OnDemandService) -> None:
    service.add_interface()
    script, record = service.script()
    first = service.run(script)
    sensor(first, service.ifname, "armed")
    assert client.query(first.control, cmd="up")["changed"] is True
    assert client.query(first.control)["idle_seconds"] is None  # up, but no packet seen
    wait_for("start", lambda: kinds(record) == ["start"])
    first.wait_log("CORE: start command done")
    wait_for("the state file up",
             lambda: json.loads(service.state_file.read_text())["state"] == "up")
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait(15)
    second = service.run(script)
    second.wait_log(RESUMED)
    sensor(second, service.ifname, "counting")
    service.send()  # only activity: start does not run again
    idle = wait_for("the packet reported", lambda: client.query(second.control)["idle_seconds"])
    assert 0 <= idle < 10, idle
    assert client.query(second.control)["state"] == "up"
    assert kinds(record) == ["start"]


def test_a_start_that_fails_while_the_daemon_exits_is_not_resumed(service: OnDemandService) -> None:
    """--retry-start: the start fails after SIGTERM came. It is saved as down
    (as "starting" while it ran), so the next run runs start again."""
    service.add_interface()
    go = service.folder / "go"
    script, record = service.script(body_first=(
        f'[ "$1" = start ] && {{ while [ ! -e {go} ]; do sleep 0.05; done; exit 3; }}\n'))
    first = service.run(script, "--retry-start", "1")
    sensor(first, service.ifname, "armed")
    service.send()
    wait_for("start running", lambda: kinds(record) == ["start"])
    wait_for("the state file says starting",
             lambda: json.loads(service.state_file.read_text())["state"] == "starting")
    first.proc.send_signal(signal.SIGTERM)
    first.wait_log("CORE: SIGTERM caught, exiting")
    go.touch()
    assert first.proc.wait(15) == 0
    assert "Warning! Executable command doesn't return 0 code" in first.text()
    assert not service.state_file.exists() or json.loads(service.state_file.read_text())[
        "state"] == "down"
    go.unlink()
    second = service.run(script, "--retry-start", "1")
    sensor(second, service.ifname, "armed")
    assert RESUMED not in second.text()
    service.send()
    wait_for("start run again", lambda: kinds(record) == ["start", "start"])


def test_a_corrupt_state_file_is_ignored_with_one_line(service: OnDemandService) -> None:
    service.add_interface()
    service.state_file.parent.mkdir(mode=0o755, exist_ok=True)
    fd = os.open(service.state_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.write(fd, b'{"version":1,"state":"up","sin')  # torn
    os.close(fd)
    script, record = service.script()
    d = service.run(script)
    sensor(d, service.ifname, "armed")
    ignored = [line for line in d.lines() if "state" in line and "CORE" in line]
    assert ignored == [f"{IGNORED}{service.state_file} (it is corrupt: not a JSON record); "
                       "starting down"], d.text()
    assert client.query(d.control)["state"] == "down"
    up(service, d, record)  # and works as ever


def test_a_state_file_for_other_commands_is_ignored_with_one_line(service: OnDemandService) -> None:
    service.add_interface()
    script_a, record_a = service.script("a.sh")
    a = service.run(script_a)
    up(service, a, record_a)
    a.stop()
    script_b, record_b = service.script("b.sh")
    b = service.run(script_b)
    sensor(b, service.ifname, "armed")
    ignored = [line for line in b.lines() if "state" in line and "CORE" in line]
    assert ignored == [f"{IGNORED}{service.state_file} (it was written for other commands); "
                       "starting down"], b.text()
    assert RESUMED not in b.text()
    assert client.query(b.control)["state"] == "down"
    assert kinds(record_b) == []


def test_retry_start_after_a_failed_start(service: OnDemandService) -> None:
    service.add_interface()
    script, record = service.script(fail_first_start=True)
    d = service.run(script, "--retry-start", "1")
    sensor(d, service.ifname, "armed")

    def started_twice() -> bool:
        service.send()
        return kinds(record) == ["start", "start"]

    wait_for("a second start", started_twice, timeout=10, every=0.1)
    first, second = (float(e[1]) for e in events(record))
    print(f"second start {second - first:.2f} s after the failed one")
    assert second - first >= 1.0
    assert d.text().count("CORE: start failed; standby again, next start allowed in 1 s") == 1
    wait_for("the server", service.server_up)
    report = client.query(d.control)
    assert report["state"] == "up"
    assert report["commands"]["last_failure"]["result"] == "exit status 3"
    assert "last failure: start: exit status 3" in client.render(report)


COULD_NOT_RUN = "Warning! Executable command could not be run ("


def start_again(service: OnDemandService, d: Daemon, done: str) -> None:
    """Packets until the start runs (after the standby's wait)."""
    def started() -> bool:
        service.send()
        return done in d.text()

    wait_for(done, started, timeout=TTL + 10, every=0.1)


@pytest.mark.parametrize("retry", [("--retry-start", "1"), ()], ids=["retry-start", "ttl"])
def test_a_start_that_cannot_be_run_is_a_failed_start(service: OnDemandService,
                                                       retry: tuple[str, ...]) -> None:
    """The script loses its #! line after the daemon started (Exec format
    error): no "start command done", not up, standby until --retry-start
    (without it, the ttl); once it is fixed, the next packet starts."""
    service.add_interface()
    script, record = service.script()
    good = script.read_text()
    d = service.run(script, *retry)
    sensor(d, service.ifname, "armed")
    script.write_text(good.removeprefix("#!/bin/sh\n"))
    service.send()
    line = d.wait_log(COULD_NOT_RUN)[0]
    assert line.endswith(f"({script} start): {script}: Exec format error"), line
    wait_after = retry[1] if retry else str(TTL)
    d.wait_log(f"CORE: start failed; standby again, next start allowed in {wait_after} s")
    assert client.query(d.control)["state"] == "down"
    assert "start command done" not in d.text()
    script.write_text(good)
    start_again(service, d, "PCAP: start command done")
    assert kinds(record) == ["start"]
    assert client.query(d.control)["state"] == "up"


def test_a_start_the_exec_user_cannot_reach_is_a_failed_start(service: OnDemandService) -> None:
    """--exec-user nobody, the command's folder made 0700 after the start:
    Permission denied is a failed start; made 0755 again, the next one runs."""
    service.add_interface()
    with public_folder("tnd-reach-") as base:
        folder = base / "d"
        folder.mkdir(mode=0o755)
        script = folder / "cmd"
        script.write_text("#!/bin/sh\nexit 0\n")
        script.chmod(0o755)
        d = service.run(script, "--exec-user", "nobody", "--retry-start", "1")
        sensor(d, service.ifname, "armed")
        folder.chmod(0o700)
        service.send()
        line = d.wait_log(COULD_NOT_RUN)[0]
        assert line.endswith(f"({script} start): {script}: Permission denied"), line
        d.wait_log("CORE: start failed; standby again, next start allowed in 1 s")
        assert client.query(d.control)["state"] == "down"
        assert "start command done" not in d.text()
        folder.chmod(0o755)
        start_again(service, d, "PCAP: start command done")
        assert client.query(d.control)["state"] == "up"
        d.stop()


def test_a_failed_start_without_retry_stays_up_as_the_original(service: OnDemandService) -> None:
    service.add_interface()
    script, record = service.script(fail_start=True)
    d = service.run(script)
    sensor(d, service.ifname, "armed")
    service.send()
    d.wait_log("Warning! Executable command doesn't return 0 code")
    report = client.query(d.control)
    assert report["state"] == "up"
    failure = report["commands"]["last_failure"]
    assert failure["event"] == "start" and failure["result"] == "exit status 3"
    service.send()  # only activity: the state is up
    wait_for("stop after ttl", lambda: kinds(record) == ["start", "stop"], timeout=TTL + 10)
    assert "standby again" not in d.text()


def test_wait_for_a_veth_created_later(service: OnDemandService) -> None:
    script, record = service.script()
    d = service.run(script, "--wait-for-interface")
    pid = sensor(d, service.ifname, "waiting for interface")
    d.wait_log(f"CORE: sensor pcap {service.ifname}: waiting for interface")
    rows = client.query(d.control)["processes"]
    assert [r["state"] for r in rows if r["role"] == f"pcap:{service.ifname}"] == [
        "waiting for interface"]
    assert kinds(record) == []

    service.add_interface()
    d.wait_log(f"CORE: interface {service.ifname} appeared (link type ether): capture starts")
    sensor(d, service.ifname, "armed")
    assert title(pid) == "", "the waiting sensor was replaced"
    service.send()
    wait_for("start on the first packet", lambda: kinds(record) == ["start"])
    d.wait_log("|- MAC: 02:00:00:00:00:01 > 02:00:00:00:00:02, EtherType: 0x0800 (IPv4)")
    assert "restarting" not in d.text()


def test_wait_for_a_tun_made_later_by_tuntapd(service: OnDemandService, tmp_path: Path) -> None:
    script, record = recorder(tmp_path)
    d = service.run(script, "--wait-for-interface")
    sensor(d, service.ifname, "waiting for interface")
    holder = Tuntapd(service.ns, tmp_path / "tuntapd.log", "-i", service.ifname)
    try:
        wait_for("the tun with carrier", lambda: has_carrier(service.ns, service.ifname))
        service.ns.ip("addr", "add", "10.99.1.1/32", "dev", service.ifname)
        service.ns.ip("route", "add", "10.99.0.0/24", "dev", service.ifname)
        d.wait_log(f"CORE: interface {service.ifname} appeared (link type raw): capture starts")
        sensor(d, service.ifname, "armed")
        send_udp(service.ns, "10.99.0.5", 5353)
        got = wait_for("start on the first packet", lambda: events(record))
        assert got[0][0] == "start"
        assert got[0][2:] == [f"pcap:{service.ifname}", "10.99.1.1", "10.99.0.5", "UDP"], got
    finally:
        holder.stop(signal.SIGKILL)


def test_a_missing_interface_without_the_option_is_exit_2(service: OnDemandService) -> None:
    script, _record = service.script()
    d = service.run(script)
    assert d.proc.wait(30) == 2
    assert d.lines() == [f"tuninetd: -i {service.ifname!r}: no such network interface "
                         "(see: ip link; --wait-for-interface waits for it)"]
