"""The sensors' sandbox, attacked the way a review would: from inside a
compromised sensor (tests/support/compromised_sensor.py runs the real setup, then
the attack), and from outside (stray descriptors and a secret in the
environment of whoever starts the daemon).

Each attack runs twice: under the whole sandbox, where the seccomp
allow-list kills the process with SIGSYS before the system call does
anything; and with the allow-list left out, which shows what the other
layers (locked filter, closed descriptors, jail) stop alone, and that the
attack code does work where nothing stops it.
"""

from __future__ import annotations

import functools
import os
import pwd
import select
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.compromised_sensor import SPOOFED
from tests.support.configs import settings
from tests.support.netlab import Netns, events, proc_status, recorder, title, wait_for, workers
from tests.support.repo import REPO
from tests.support.timing import BEAT
from tuninetd.common import wire, worker
from tuninetd.supervisor import arbiter, children
from tuninetd.supervisor.config import bpf
from tuninetd.supervisor.config.settings import Account, SensorSpec
from tuninetd.supervisor.sandbox import allowlist, privcheck
from tuninetd.supervisor.sandbox.jail import empty_dir

pytestmark = pytest.mark.root

ETH_P_ALL = 0x0003
FRAME = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src="10.77.0.1", dst="10.77.0.2")
    / UDP(sport=4000, dport=5353)
    / b"x"
)

# What each attack gets with the seccomp layer left out: the other layers alone.
UNCONFINED = {
    "detach-filter": "EPERM",  # SO_LOCK_FILTER
    "replace-filter": "EPERM",  # SO_LOCK_FILTER
    "bind-other-interface": "ok",  # only seccomp stops it
    "send-spoofed-frame": "ok",
    "new-udp-socket": "ok",
    "connect-abstract-unix": "ok",  # the jail does not cover abstract names
    "execve": "ENOENT",  # the jail is empty
    "ptrace": "ok",
    "fchdir-stray-fd": "EBADF",  # the spawn closed it
    "write-stderr": "ok",  # into /dev/null, not the daemon's log
    "fork": "EAGAIN",  # RLIMIT_NPROC 0
    "hoard-descriptors": "EMFILE",  # RLIMIT_NOFILE 16
}
# The limits a sensor holds, as /proc/PID/limits shows them (soft, hard).
LIMITS = {"Max file size": ("0", "0"), "Max processes": ("0", "0"),
          "Max open files": ("16", "16"), "Max address space": ("268435456", "268435456")}


@functools.cache
def udp_filter() -> tuple[tuple[int, int, int, int], ...]:
    program = bpf.compile_filters([("udp", "ether")])[("udp", "ether")]
    assert not isinstance(program, bpf.FilterError), program
    return program


@functools.cache
def allow_list() -> tuple[tuple[int, int, int, int], ...]:
    """The product's own, as the supervisor builds it for every sensor."""
    return allowlist.build(worker.CHANNEL_FD)


@dataclass
class Outcome:
    reported: str | None  # what the attack code said; None when it died first
    status: int  # its wait status
    left: list[str]  # what privcheck found still privileged at its hello
    limits: dict[str, tuple[str, str]]  # its resource limits then, /proc/PID/limits


class Scene:
    """A network namespace with witnesses of each attack's effect: a UDP
    receiver, an abstract Unix listener, a sniffer on the veth peer, a stray
    descriptor to /, and a file standing for the daemon's log as fd 2."""

    def __init__(self, ns: Netns, folder: Path) -> None:
        self.ns = ns
        ns.ip("link", "set", "lo", "up")
        self.abstract = f"tuninetd-test-{uuid.uuid4().hex[:12]}"
        with ns.entered():
            self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.udp.bind(("127.0.0.1", 0))
            self.unix = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.unix.bind("\0" + self.abstract)
            self.unix.listen(1)
            self.sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW,
                                         socket.htons(ETH_P_ALL))
            self.sniffer.bind(("peer0", 0))
        for s in (self.udp, self.unix, self.sniffer):
            s.setblocking(False)
        self.log = folder / "daemon.log"
        self.forged = f"CORE: forged by a sensor {uuid.uuid4().hex}"

    def close(self) -> None:
        for s in (self.udp, self.unix, self.sniffer):
            s.close()

    def run(self, attack: str, *, confined: bool, kind: str = "pcap") -> Outcome:
        """Start the harness as the supervisor starts a sensor (the real
        Worker.spawn) from a process holding a stray descriptor to / and
        with fd 2 on the log; play the supervisor's side of the channel."""
        nobody = pwd.getpwnam("nobody")
        spec = (SensorSpec("pcap", "tap0", link="ether", bpf=udp_filter()) if kind == "pcap"
                else SensorSpec("nflog", "7", group=7))
        cfg = settings(command="/bin/true", sensors=(spec,), beat=BEAT,
                     sensor_user=Account("nobody", nobody.pw_uid, nobody.pw_gid))
        config: dict[str, Any] = arbiter.sensor_config(spec, cfg, empty_dir(), allow_list())
        stray = os.open("/", os.O_RDONLY | os.O_DIRECTORY)
        os.set_inheritable(stray, True)
        config.update(attack=attack, unconfined=not confined, stray=stray,
                      port=self.udp.getsockname()[1], abstract=self.abstract,
                      forged=self.forged)
        w = children.Worker(role=spec.label, module="tests.support.compromised_sensor",
                            config=config, schema=wire.SENSOR_MESSAGES,
                            log_name=f"sensor {kind}")
        # Workers import from the supervisor's sys.path less its first entry
        # (the script's folder): the harness module must be found past it,
        # wherever pytest put the repository.
        if str(REPO) not in sys.path[1:]:
            sys.path.append(str(REPO))
            children.import_path.cache_clear()
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        saved = os.dup(2)
        try:
            os.dup2(log, 2)
            with self.ns.entered():
                w.spawn(time.monotonic())
        finally:
            os.dup2(saved, 2)
            for fd in (saved, log, stray):
                os.close(fd)
        assert w.sock is not None
        try:
            hello = wire.parse(_record(w.sock), wire.SENSOR_MESSAGES)
            assert hello["t"] == "hello", hello
            left = privcheck.privileges_left(w.pid, nobody.pw_uid, nobody.pw_gid, empty_dir())
            limits = read_limits(w.pid)
            w.send("go")
            data = _record(w.sock)
        finally:
            w.close()
            _, status = os.waitpid(w.pid, 0)
        reported = None
        if data:
            msg = wire.parse(data, wire.SENSOR_MESSAGES)
            reported = msg["reason"].removeprefix(f"{attack}: ")
        return Outcome(reported, status, left, limits)

    def udp_received(self) -> bool:
        return _readable(self.udp) and self.udp.recv(100) == b"exfiltrated"

    def unix_connected(self) -> bool:
        return _readable(self.unix)

    def spoofed_seen(self) -> bool:
        while _readable(self.sniffer):
            if self.sniffer.recv(2048) == SPOOFED:
                return True
        return False

    def log_forged(self) -> bool:
        return self.log.exists() and self.forged in self.log.read_text(errors="replace")


def read_limits(pid: int) -> dict[str, tuple[str, str]]:
    """/proc/PID/limits: each limit's name and its soft and hard values."""
    with open(f"/proc/{pid}/limits") as f:
        rows = f.read().splitlines()[1:]
    return {row[:26].strip(): tuple(row[26:].split()[:2]) for row in rows}  # type: ignore[misc]


def _record(sock: socket.socket, timeout: float = 15.0) -> bytes:
    ready_, _, _ = select.select([sock], [], [], timeout)
    assert ready_, "no record from the sensor"
    try:
        return wire.recv(sock)
    except ConnectionResetError:
        return b""


def _readable(sock: socket.socket) -> bool:
    # Everything the attacker sent is queued by now: it has been reaped.
    return bool(select.select([sock], [], [], 0)[0])


@pytest.fixture
def scene(veth: Netns, tmp_path: Path) -> Iterator[Scene]:
    s = Scene(veth, tmp_path)
    yield s
    s.close()


def effects(scene: Scene) -> dict[str, bool]:
    return {
        "send-spoofed-frame": scene.spoofed_seen(),
        "new-udp-socket": scene.udp_received(),
        "connect-abstract-unix": scene.unix_connected(),
        "write-stderr": scene.log_forged(),
    }


@pytest.mark.parametrize("attack", UNCONFINED)
def test_compromised_pcap_sensor_is_killed_by_seccomp(scene: Scene, attack: str) -> None:
    out = scene.run(attack, confined=True)
    # Includes "Seccomp: 2", an empty bounding set and the jail as its root.
    assert out.left == [], out.left
    assert {k: out.limits[k] for k in LIMITS} == LIMITS
    assert out.reported is None, f"{attack} came back with {out.reported}"
    assert os.WIFSIGNALED(out.status) and os.WTERMSIG(out.status) == signal.SIGSYS, out
    assert not any(effects(scene).values()), effects(scene)


@pytest.mark.parametrize("attack", UNCONFINED)
def test_without_seccomp_the_other_layers_alone(scene: Scene, attack: str) -> None:
    out = scene.run(attack, confined=False)
    assert out.reported == UNCONFINED[attack], out
    assert os.WIFEXITED(out.status), out
    seen = effects(scene)
    if attack in seen and attack != "write-stderr":
        assert seen[attack], f"{attack} reported ok but left no trace: the test proves nothing"
    assert not seen["write-stderr"], "a sensor wrote into the daemon's log"


def test_a_sensor_cannot_grow_past_its_address_space(scene: Scene) -> None:
    """1 GiB asked for, under the whole sandbox (mmap is allowed): refused
    by RLIMIT_AS, the sensor goes on (without the limit the 1 GiB came)."""
    out = scene.run("grow-memory", confined=True)
    assert out.reported == "ENOMEM", out
    assert os.WIFEXITED(out.status), out


@pytest.mark.parametrize("attack", ["send-spoofed-frame", "new-udp-socket", "ptrace"])
def test_compromised_nflog_sensor_is_killed_by_seccomp(scene: Scene, attack: str) -> None:
    out = scene.run(attack, confined=True, kind="nflog")
    assert out.left == [], out.left
    assert out.reported is None, f"{attack} came back with {out.reported}"
    assert os.WIFSIGNALED(out.status) and os.WTERMSIG(out.status) == signal.SIGSYS, out


# -- the whole daemon -----------------------------------------------------------------


def fds_of(pid: int) -> dict[int, str]:
    folder = f"/proc/{pid}/fd"
    return {int(fd): os.readlink(f"{folder}/{fd}") for fd in os.listdir(folder)}


def test_workers_inherit_no_stray_descriptor_and_no_environment(
    veth: Netns, tmp_path: Path
) -> None:
    """Started from a shell holding ``exec 7</`` and a file open for writing,
    with a secret in its environment: the sensors hold /dev/null and their
    sockets only, and no trace of the secret."""
    script, _ = recorder(tmp_path)
    stray = tmp_path / "stray"
    secret = f"SECRET_TOKEN={uuid.uuid4().hex}"
    log = tmp_path / "daemon.log"
    daemon = [sys.executable, "-m", "tuninetd.supervisor.main", "-i", "tap0", "-f", "udp",
              "-a", "-c", str(script), "--beat", str(BEAT), "--control", str(tmp_path / "ctl")]
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            ["bash", "-c", f'exec 7</ 8>>"{stray}"; exec "$@"', "bash",
             *veth.exec_argv(*daemon)],
            env={**os.environ, "SECRET_TOKEN": secret.partition("=")[2]},
            stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
    try:
        supervisor = _daemon_of(proc)
        assert fds_of(supervisor)[7] == "/"  # the stray descriptors did reach it
        pid = wait_for("the sensor armed", lambda: _child(supervisor, "tuninetd: sensor pcap",
                                                          "armed"))
        fds = fds_of(pid)
        assert [fds[n] for n in (0, 1, 2)] == ["/dev/null"] * 3, fds
        others = {n: t for n, t in fds.items() if n > 2}
        # The channel, and with -a the trigger and the counting socket.
        assert len(others) == 3 and all(t.startswith("socket:") for t in others.values()), fds
        with open(f"/proc/{pid}/environ", "rb") as f:
            environ = f.read()
        assert secret.encode() not in environ and b"SECRET_TOKEN" not in environ, environ
        assert proc_status(pid)["Seccomp"] == "2"
        assert int(proc_status(pid).get("Seccomp_filters", "1")) >= 1
        executor = wait_for("the executor", lambda: _child(supervisor, "tuninetd: executor", ""))
        assert not {n for n in fds_of(executor) if n > 2} & {7, 8}, fds_of(executor)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def _daemon_of(proc: subprocess.Popen[bytes]) -> int:
    """The supervisor's pid (bash and ip exec into it: the same pid), once
    its title is set."""
    wait_for("the supervisor", lambda: title(proc.pid).startswith("tuninetd: supervisor"))
    return proc.pid


def _child(pid: int, prefix: str, state: str) -> int | None:
    return next((p for p, t in workers(pid).items() if t.startswith(prefix) and state in t), None)


def test_a_sensor_killed_by_seccomp_is_logged_and_replaced(veth: Netns, tmp_path: Path) -> None:
    """The real supervisor; its first pcap sensor breaks the allow-list on its
    first packet (tests/support/compromised_sensor.py), its replacement is sound."""
    script, record = recorder(tmp_path)
    log = tmp_path / "daemon.log"
    argv = ["-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1", "--beat", str(BEAT),
            "--control", str(tmp_path / "ctl")]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            veth.exec_argv(sys.executable, "-m", "tests.support.compromised_sensor", "supervise",
                           str(tmp_path / "marker"), *argv),
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT,
        )
    try:
        def text() -> str:
            return log.read_text(errors="replace")

        wait_for("the sensor armed", lambda: _child(proc.pid, "tuninetd: sensor", "armed"))
        wait_for("the executor idle", lambda: _child(proc.pid, "tuninetd: executor", "idle"))
        veth.sender().send(FRAME)
        line = wait_for("the kill logged", lambda: [x for x in text().splitlines()
                                                   if "killed by seccomp" in x], 20)[0]
        assert "CORE: sensor pcap tap0 (pid " in line, line
        assert "killed by seccomp (signal 31, SIGSYS); restarting it in" in line, line
        wait_for("the replacement", lambda: "CORE: sensor pcap tap0 is back" in text(), 20)
        wait_for("the replacement armed", lambda: _child(proc.pid, "tuninetd: sensor", "armed"))
        assert events(record) == [], "the rogue's trigger got through"
        veth.sender().send(FRAME)
        wait_for("the start", lambda: [e[0] for e in events(record)][:1] == ["start"])
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)



def supervise_with_rogue(veth: Netns, tmp_path: Path, flavour: str,
                         log: Path) -> subprocess.Popen[bytes]:
    """The real supervisor on tap0 whose first pcap sensor is the
    compromised one playing ``flavour`` (tests/support/compromised_sensor.py)."""
    script, _ = recorder(tmp_path)
    argv = ["-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1", "--beat", str(BEAT),
            "--control", str(tmp_path / "ctl")]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    with open(log, "wb") as logf:
        return subprocess.Popen(
            veth.exec_argv(sys.executable, "-m", "tests.support.compromised_sensor",
                           f"supervise-{flavour}", str(tmp_path / "marker"), *argv),
            cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT)


def test_a_sensor_seccomp_kills_at_its_hello_is_not_called_privileged(
        veth: Netns, tmp_path: Path) -> None:
    """The sensor makes a call the allow-list refuses right after its hello:
    the supervisor, checking it in /proc, finds "Seccomp: 3" (being killed).
    That is reported as the seccomp kill it is, and the sensor replaced,
    never as a sensor "still privileged"."""
    log = tmp_path / "daemon.log"
    proc = supervise_with_rogue(veth, tmp_path, "at-hello", log)
    try:
        def text() -> str:
            return log.read_text(errors="replace")

        line = wait_for("the kill logged", lambda: [x for x in text().splitlines()
                                                   if "killed by seccomp" in x], 20)[0]
        assert "sensor pcap tap0 (pid " in line, line
        # Replaced, or, when it died while the daemon was starting, the start
        # fails with that line.
        wait_for("the replacement or the end", lambda: (
            "CORE: sensor pcap tap0 is back" in text() or proc.poll() is not None), 20)
        assert "privilege" not in text(), text()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


def test_a_sensor_claiming_its_interface_is_gone_gets_no_stream_of_sockets(
        veth: Netns, tmp_path: Path) -> None:
    """A compromised pcap sensor says "waiting for interface" at every beat
    while tap0 is there: it is handed no socket (before, a fresh root-opened
    one each beat). Once tap0 is deleted and made again (a new index), it
    gets one socket for the new interface, and no more after that."""
    log = tmp_path / "daemon.log"
    proc = supervise_with_rogue(veth, tmp_path, "lost", log)
    try:
        rogue = wait_for("the sensor claiming a lost interface",
                         lambda: _child(proc.pid, "tuninetd: sensor attacked", "got "), 20)

        def got() -> str:
            return title(rogue).rpartition("got ")[2]

        def holds(count: str, beats: int) -> None:
            """``got count`` for that many beats of the sensor's (it claims
            its loss at each)."""
            end = time.monotonic() + beats * BEAT
            while time.monotonic() < end:
                assert got() == count, f"{title(rogue)}\n{log.read_text(errors='replace')}"
                time.sleep(0.05)

        holds("0", 20)
        veth.ip("link", "del", "tap0")
        veth.add_veth()
        wait_for("one socket for the new tap0", lambda: got() == "1", 10)
        holds("1", 20)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)
