"""Several daemons on one host, as with the original: each with a name of its
own, its own control socket in /run/tuninetd, listed by ``tuninetd status``,
driven by ``tuninetd up`` / ``tuninetd down``.

Real daemons in throwaway network namespaces, started with the original's
command lines and no other flag. /run/tuninetd is a tmpfs of the test's own
(a mount namespace the daemons and clients are entered into), so the test
sees only its daemons while other test runs start theirs on the host.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.netlab import (
    Daemon,
    Netns,
    as_nobody,
    become_nobody,
    enter_mount_namespace,
    events,
    kinds,
    need_root,
    ready,
    recorder,
    send_udp,
    sh,
    title,
    wait_for,
)
from tests.support.nft_rules import log_rules
from tests.support.repo import REPO
from tuninetd.supervisor.ops import client

PEER = "10.77.0.2"
PEER_MAC = "02:00:00:00:77:02"

Enter = tuple[str, ...]


@pytest.fixture
def private_run() -> Iterator[Enter]:
    """A mount namespace with an empty /run/tuninetd; the command prefix that
    enters it."""
    need_root()
    os.makedirs("/run/tuninetd", exist_ok=True)
    holder = subprocess.Popen(
        ["unshare", "-m", "--propagation", "private", "sh", "-c",
         "mount -t tmpfs -o mode=0755 tnd-test /run/tuninetd && echo ok && exec sleep 3600"],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None
    try:
        assert holder.stdout.readline() == "ok\n"
        yield ("nsenter", "-t", str(holder.pid), "-m", "--")
    finally:
        holder.kill()
        holder.wait()


def tuninetd(enter: Enter, *args: str, ns: Netns | None = None
             ) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "tuninetd.supervisor.main", *args]
    if ns is not None:
        argv = ns.exec_argv(*argv)
    return subprocess.run([*enter, *argv], capture_output=True, text=True, timeout=30)


def statuses(enter: Enter, *args: str) -> list[dict[str, Any]]:
    r = tuninetd(enter, "status", "--json", *args)
    assert r.returncode == 0, r.stderr
    records: list[dict[str, Any]] = json.loads(r.stdout)
    return records


def addressed(ns: Netns) -> Netns:
    """tap0 with an address; what the namespace sends to PEER leaves through it.
    No IPv6: the original's command lines have no filter, and a new link's
    own IPv6 chatter (DAD, router solicitations) would fire them."""
    for key in ("all", "default"):
        sh(*ns.exec_argv("sysctl", "-qw", f"net.ipv6.conf.{key}.disable_ipv6=1"))
    ns.add_veth()
    ns.ip("addr", "add", "10.77.0.1/24", "dev", "tap0")
    ns.ip("neigh", "add", PEER, "lladdr", PEER_MAC, "dev", "tap0", "nud", "permanent")
    return ns


@pytest.fixture
def tap_ns(netns: Netns) -> Netns:
    return addressed(netns)


@pytest.fixture
def other_ns() -> Iterator[Netns]:
    need_root()
    ns = Netns()
    try:
        yield addressed(ns)
    finally:
        ns.delete()


StartDaemon = Callable[..., Daemon]


def plain(start_daemon: StartDaemon, ns: Netns, enter: Enter, *args: str,
          sensors: int = 1) -> Daemon:
    d = start_daemon(ns, *args, plain=True, enter=enter)
    ready(d, sensors=sensors)
    return d


def test_three_daemons_side_by_side(tap_ns: Netns, private_run: Enter, tmp_path: Path,
                                    start_daemon: StartDaemon) -> None:
    enter = private_run
    log_rules(tap_ns, "udp dport 3000 log group 7")
    scripts = {n: recorder(tmp_path, name=f"{n}.sh") for n in ("a", "b", "c")}
    a = plain(start_daemon, tap_ns, enter, "-i", "tap0", "-f", "udp port 1000",
              "-c", str(scripts["a"][0]))
    b = plain(start_daemon, tap_ns, enter, "-i", "tap0", "-f", "udp port 2000",
              "-c", str(scripts["b"][0]))
    c = plain(start_daemon, tap_ns, enter, "-n", "7", "-c", str(scripts["c"][0]))

    # Distinct names, each its own pid; the titles carry the name.
    listed = {r["name"]: r for r in statuses(enter)}
    assert set(listed) == {"tap0", "tap0-2", "nflog-7"}, listed
    assert {n: r["pid"] for n, r in listed.items()} == {
        "tap0": a.pid, "tap0-2": b.pid, "nflog-7": c.pid}
    for name, d in (("tap0", a), ("tap0-2", b), ("nflog-7", c)):
        assert title(d.pid) == f"tuninetd: supervisor {name} down"
        assert listed[name]["state"] == "down"
        assert listed[name].keys() >= {"ttl", "idle_seconds", "last_trigger", "commands",
                                       "processes"}
        own = statuses(enter, name)
        assert [r["pid"] for r in own] == [d.pid]
    assert set(os.listdir(f"/proc/{c.pid}/root/run/tuninetd")) >= {
        "tap0.sock", "tap0-2.sock", "nflog-7.sock"}
    text = tuninetd(enter, "status")
    assert text.returncode == 0
    heads = [line for line in text.stdout.splitlines() if "(tuninetd " in line]
    assert [h.split(":")[0] for h in heads] == ["nflog-7", "tap0", "tap0-2"], text.stdout
    # pgrep -x tuninetd still finds every supervisor.
    found = {int(p) for p in sh("pgrep", "-x", "tuninetd", check=False).stdout.split()}
    assert found >= {a.pid, b.pid, c.pid}

    # Each fires on its own traffic only.
    send_udp(tap_ns, PEER, 2000)
    wait_for("b's start", lambda: kinds(scripts["b"][1]) == ["start"])
    send_udp(tap_ns, PEER, 3000)
    wait_for("c's start", lambda: kinds(scripts["c"][1]) == ["start"])
    assert kinds(scripts["a"][1]) == []
    states = {r["name"]: r["state"] for r in statuses(enter)}
    assert states == {"tap0": "down", "tap0-2": "up", "nflog-7": "up"}

    # down and up act on the named daemon only.
    r = tuninetd(enter, "down", "tap0-2")
    assert r.returncode == 0 and r.stdout == f"tap0-2 (pid {b.pid}): down: stop is being run\n"
    wait_for("b's stop", lambda: kinds(scripts["b"][1]) == ["start", "stop"])
    b.wait_log("CORE: down requested over the control socket")
    r = tuninetd(enter, "down", "tap0-2")
    assert r.returncode == 0 and "already down" in r.stdout
    b.wait_log("Warning! Tuninetd is already in standby mode")
    r = tuninetd(enter, "up", "tap0")
    assert r.returncode == 0 and r.stdout.startswith(f"tap0 (pid {a.pid}): up: start"), r
    wait_for("a's start", lambda: kinds(scripts["a"][1]) == ["start"])
    a.wait_log("CORE: up requested over the control socket")
    assert events(scripts["a"][1])[0][2] == "control"  # TUNINETD_SENSOR
    r = tuninetd(enter, "up", "tap0")
    assert r.returncode == 0 and "already up" in r.stdout
    states = {r["name"]: r["state"] for r in statuses(enter)}
    assert states == {"tap0": "up", "tap0-2": "down", "nflog-7": "up"}
    assert kinds(scripts["c"][1]) == ["start"] and kinds(scripts["b"][1]) == ["start", "stop"]

    # No NAME with several daemons: exit 2 and the names; an unknown one: exit 3.
    r = tuninetd(enter, "down")
    assert r.returncode == 2 and "nflog-7, tap0, tap0-2" in r.stderr, r
    r = tuninetd(enter, "up", "nosuch")
    assert r.returncode == 3 and "nosuch" in r.stderr and r.stderr.count("\n") == 1
    r = tuninetd(enter, "status", "nosuch")
    assert r.returncode == 3 and "nosuch" in r.stderr


def test_same_nflog_group_refused_naming_it(tap_ns: Netns, private_run: Enter,
                                            tmp_path: Path, start_daemon: StartDaemon) -> None:
    script, _ = recorder(tmp_path)
    first = plain(start_daemon, tap_ns, private_run, "-n", "8", "-c", str(script))
    second = tuninetd(private_run, "-n", "8", "-c", str(script), ns=tap_ns)
    assert second.returncode == 1, second.stderr
    errors = [line for line in second.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "nflog group 8" in errors[0], second.stderr
    assert "control socket" not in second.stderr
    assert [r["pid"] for r in statuses(private_run)] == [first.pid]


def test_same_interface_name_in_two_namespaces(tap_ns: Netns, other_ns: Netns,
                                               private_run: Enter, tmp_path: Path,
                                               start_daemon: StartDaemon) -> None:
    (s1, r1), (s2, r2) = recorder(tmp_path, name="1.sh"), recorder(tmp_path, name="2.sh")
    one = plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-f", "udp", "-c", str(s1))
    two = plain(start_daemon, other_ns, private_run, "-i", "tap0", "-f", "udp", "-c", str(s2))
    pids = {r["name"]: r["pid"] for r in statuses(private_run)}
    assert pids == {"tap0": one.pid, "tap0-2": two.pid}
    send_udp(other_ns, PEER, 4000)
    wait_for("the second one's start", lambda: kinds(r2) == ["start"])
    assert [r["state"] for r in statuses(private_run, "tap0")] == ["down"]
    assert kinds(r1) == []


def test_explicit_name_held_then_freed_by_sigkill(tap_ns: Netns, private_run: Enter,
                                                  tmp_path: Path,
                                                  start_daemon: StartDaemon) -> None:
    script, _ = recorder(tmp_path)
    first = plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-c", str(script),
                  "--name", "vpn@home")
    assert title(first.pid) == "tuninetd: supervisor vpn@home down"
    second = tuninetd(private_run, "-i", "tap0", "-c", str(script), "--name", "vpn@home",
                      ns=tap_ns)
    assert second.returncode == 1
    errors = [line for line in second.stderr.splitlines() if line.startswith("Error")]
    assert len(errors) == 1 and "vpn@home" in errors[0] and f"pid {first.pid}" in errors[0]
    check = tuninetd(private_run, "-i", "tap0", "-c", str(script), "--name", "vpn@home",
                     "--check-config", ns=tap_ns)
    assert check.returncode == 1 and f"pid {first.pid}" in check.stderr, check

    # SIGKILL: the socket stays behind, the name is free again.
    os.kill(first.pid, signal.SIGKILL)
    first.proc.wait(10)
    wait_for("the old workers gone", lambda: not tap_ns.pids())
    assert tuninetd(private_run, "status").returncode == 3  # the stale one is not listed
    third = plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-c", str(script),
                  "--name", "vpn@home")
    assert [(r["name"], r["pid"]) for r in statuses(private_run)] == [("vpn@home", third.pid)]
    st = os.stat(f"/proc/{third.pid}/root/run/tuninetd/vpn@home.sock")
    assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600


def test_template_unit_instance_is_its_name(tap_ns: Netns, private_run: Enter,
                                            tmp_path: Path,
                                            start_daemon: StartDaemon) -> None:
    """tuninetd@office.service's command line, run as systemd would (its
    config file here), answers to tuninetd status office."""
    unit = REPO / "conf" / "tuninetd@.service"
    exec_start = next(line.partition("=")[2] for line in unit.read_text().splitlines()
                      if line.startswith("ExecStart="))
    program, *args = exec_start.split()
    assert program == "/usr/bin/tuninetd"
    script, _ = recorder(tmp_path)
    conf = tmp_path / "office.toml"
    conf.write_text(f'interfaces = ["tap0"]\nfilter = "udp"\ncommand = "{script}"\n'
                    'name = "ignored"\n')
    argv = [a.replace("/etc/tuninetd/%i.toml", str(conf)).replace("%i", "office")
            for a in args]
    d = plain(start_daemon, tap_ns, private_run, *argv)
    assert [(r["name"], r["pid"]) for r in statuses(private_run, "office")] == [
        ("office", d.pid)]
    assert title(d.pid) == "tuninetd: supervisor office down"


@pytest.mark.parametrize("bad", ["", "a/b", "a b", "x" * 65, "../etc", "é"])
def test_bad_names_refused(bad: str, tmp_path: Path) -> None:
    need_root()
    script, _ = recorder(tmp_path)
    r = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "-i", "lo", "-c",
                        str(script), "--name", bad], capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"tuninetd: --name {bad!r}: expected 1 to 64 characters")
    r = subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", "status", bad],
                       capture_output=True, text=True, timeout=20)
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr


def test_no_daemon_running(private_run: Enter) -> None:
    r = tuninetd(private_run, "status", "--json")
    assert r.returncode == 3 and "no daemon running" in r.stderr
    r = tuninetd(private_run, "down")
    assert r.returncode == 3


def test_unprivileged_is_refused(tap_ns: Netns, private_run: Enter, tmp_path: Path,
                                 start_daemon: StartDaemon) -> None:
    script, record = recorder(tmp_path)
    plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-f", "udp", "-c", str(script))
    holder = int(private_run[2])  # nsenter -t PID: the namespace's holder
    for verb in ("status", "down", "up"):
        # In a fork of this interpreter: a clone of the repository may sit
        # in a folder nobody cannot enter, and no fresh one could import us.
        code, out = as_nobody(functools.partial(client.main, verb, []), mount_ns_of=holder)
        assert code == 4 and "permission denied" in out, (verb, code, out)
    assert kinds(record) == []


def run_dir(enter: Enter) -> Path:
    """The private /run/tuninetd, seen through its holder's root."""
    return Path(f"/proc/{int(enter[2])}/root/run/tuninetd")


@pytest.mark.parametrize("first_name", [(), ("--name", "tap0")], ids=["derived", "explicit"])
def test_the_second_daemon_of_a_line_keeps_its_own_state(
        first_name: tuple[str, ...], tap_ns: Netns, other_ns: Netns, private_run: Enter,
        tmp_path: Path, start_daemon: StartDaemon) -> None:
    """The same line in two namespaces: the second daemon is tap0-2, and its
    state file is tap0-2's. It neither resumes the first one's up state (nor
    runs stop for a start it never ran) nor writes into its file."""
    script, record = recorder(tmp_path)
    line = ("-i", "tap0", "-f", "udp", "-c", str(script))
    one = plain(start_daemon, tap_ns, private_run, *line, *first_name)
    send_udp(tap_ns, PEER, 4000)
    one.wait_log("PCAP: start command done")
    saved = run_dir(private_run) / "tap0.state"
    wait_for("tap0's state up", lambda: json.loads(saved.read_text())["state"] == "up")

    two = plain(start_daemon, other_ns, private_run, *line)
    assert {r["name"]: r["pid"] for r in statuses(private_run)} == {
        "tap0": one.pid, "tap0-2": two.pid}
    assert "resuming the up state" not in two.text(), two.text()
    assert [r["state"] for r in statuses(private_run, "tap0-2")] == ["down"]
    assert two.stop() == 0
    assert kinds(record) == ["start"]
    assert json.loads(saved.read_text())["state"] == "up"
    assert [r["state"] for r in statuses(private_run, "tap0")] == ["up"]


def test_an_orderly_exit_while_down_leaves_nothing_behind(
        tap_ns: Netns, private_run: Enter, tmp_path: Path,
        start_daemon: StartDaemon) -> None:
    script, record = recorder(tmp_path)
    d = plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-f", "udp", "-c", str(script),
              "-t", "1")
    send_udp(tap_ns, PEER, 4000)
    wait_for("start and stop", lambda: kinds(record) == ["start", "stop"])
    # "empty" is the sensors' jail, shared by every daemon.
    assert sorted(os.listdir(run_dir(private_run))) == [
        "empty", "tap0.lock", "tap0.sock", "tap0.state"]
    assert d.stop() == 0
    assert os.listdir(run_dir(private_run)) == ["empty"]


def hold_lock_as_nobody(path: Path, mount_ns_of: int) -> tuple[int, str]:
    """A process of nobody's (in the daemons' mount namespace) that opens
    ``path`` and takes an exclusive flock on it, then keeps it until killed:
    its pid, and "held" or why it could not."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(rfd)
            enter_mount_namespace(mount_ns_of)
            become_nobody()
            try:
                fd = os.open(path, os.O_RDONLY)
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.write(wfd, f"refused: {exc.strerror}\n".encode())
                os._exit(0)
            os.write(wfd, b"held\n")
            while True:
                signal.pause()
        finally:
            os._exit(1)
    os.close(wfd)
    with os.fdopen(rfd, errors="replace") as r:
        said = r.readline().strip()
    return pid, said


def test_a_local_user_cannot_hold_a_crashed_daemons_name(
        tap_ns: Netns, private_run: Enter, tmp_path: Path,
        start_daemon: StartDaemon) -> None:
    """nobody flocks the name's lock file, then the supervisor gets SIGABRT
    (what systemd's watchdog sends): the restart takes the name all the same."""
    script, _ = recorder(tmp_path)
    line = ("-i", "tap0", "-f", "udp", "-c", str(script), "--name", "vpn")
    first = plain(start_daemon, tap_ns, private_run, *line)
    attacker, said = hold_lock_as_nobody(Path("/run/tuninetd/vpn.lock"), int(private_run[2]))
    try:
        os.kill(first.pid, signal.SIGABRT)
        first.proc.wait(10)
        wait_for("the old workers gone", lambda: not tap_ns.pids())
        again = plain(start_daemon, tap_ns, private_run, *line)
        assert [(r["name"], r["pid"]) for r in statuses(private_run)] == [("vpn", again.pid)]
        assert said == "refused: Permission denied", said
        st = os.stat(run_dir(private_run) / "vpn.lock")
        assert st.st_uid == 0 and st.st_mode & 0o777 == 0o600, oct(st.st_mode)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(attacker, signal.SIGKILL)
        os.waitpid(attacker, 0)


def test_a_lock_file_others_could_open_is_replaced(
        tap_ns: Netns, private_run: Enter, tmp_path: Path,
        start_daemon: StartDaemon) -> None:
    """A lock file left 0644 (as earlier releases made it) that nobody opened
    and holds does not keep the name: the daemon makes a new one, 0600."""
    old = run_dir(private_run) / "vpn.lock"
    old.write_text("")
    old.chmod(0o644)
    attacker, said = hold_lock_as_nobody(Path("/run/tuninetd/vpn.lock"), int(private_run[2]))
    try:
        assert said == "held"
        script, _ = recorder(tmp_path)
        d = plain(start_daemon, tap_ns, private_run, "-i", "tap0", "-f", "udp", "-c",
                  str(script), "--name", "vpn")
        assert [(r["name"], r["pid"]) for r in statuses(private_run)] == [("vpn", d.pid)]
        assert os.stat(old).st_mode & 0o777 == 0o600
    finally:
        os.kill(attacker, signal.SIGKILL)
        os.waitpid(attacker, 0)
