"""The daemon's processes, for real: titles and short names as ``ps`` and
``pgrep`` see them, the sensors' privilege drop read from /proc, workers
killed or frozen and replaced, a hung command tree killed at its timeout
while capture and the ttl clock go on, and everything ending with the
supervisor.

Each test runs the daemon in its own network namespace (veth tap0/peer0) with
a short beat and ttl; frames are crafted with scapy and sent on peer0. Every
wait polls with a deadline; the only sleeps pace a stream of packets.
"""

from __future__ import annotations

import contextlib
import functools
import os
import pwd
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import (
    EXECUTOR,
    SUPERVISOR,
    Daemon,
    Lab,
    LabSetup,
    Netns,
    default_sensor_account,
    gone,
    kinds,
    proc_status,
    public_folder,
    ready,
    sh,
    title,
    wait_for,
    wait_gone,
    wait_title,
    worker,
)
from tests.support.timing import BACKOFF_FIRST, BEAT, SILENT_BEATS, SLACK

pytestmark = pytest.mark.root

HEARTBEAT_BEATS = 6  # a worker with nothing to say beats this often
TERM_GRACE = 2.0  # the executor's TERM-to-KILL grace for a timed-out tree
PORT = 9000
FRAME = bytes(
    Ether(src="02:00:00:00:00:0b", dst="ff:ff:ff:ff:ff:ff")
    / IP(src="10.9.0.2", dst="10.9.0.1")
    / UDP(sport=40000, dport=PORT)
    / (b"p" * 16)
)

SENSOR = "tuninetd: sensor pcap tap0"


@pytest.fixture
def lab_setup() -> LabSetup:
    """The daemon on tap0, for udp to PORT."""
    return LabSetup(args=("-i", "tap0", "-f", f"udp port {PORT}"))


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def wait_pids(*paths: Path) -> list[int]:
    def probe() -> list[int] | None:
        pids = [read_pid(p) for p in paths]
        return None if None in pids else [p for p in pids if p is not None]

    return wait_for(f"pid files {[p.name for p in paths]}", probe)


def wait_commands(record: Path, want: list[str], timeout: float = 10.0) -> None:
    wait_for(f"commands {want} (have {kinds(record)})",
             lambda: kinds(record) == want, timeout)


def pgrep(name: str) -> set[int]:
    out = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False)
    assert out.returncode in (0, 1), out.stderr
    return {int(p) for p in out.stdout.split()}


# -- titles and names --------------------------------------------------------------


def test_titles_and_short_names_follow_the_state(lab: Lab) -> None:
    run = lab.run(ttl=2, body='[ "$1" = start ] && sleep 1.5\nexit 0')
    d, record = run.daemon, run.record
    sup = d.pid
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")
    sen = worker(d, SENSOR, "armed")
    assert title(sup) == f"{SUPERVISOR} {d.name} down"
    assert title(exe) == f"{EXECUTOR} {d.name} idle"
    assert title(sen) == f"{SENSOR} armed"

    # ps itself shows the titles; pgrep -x finds the short names (other tests'
    # daemons may be running: only this daemon's tree counts).
    ps = sh("ps", "-o", "pid=,comm=,args=", "-p", f"{sup},{exe},{sen}").stdout
    rows = {int(line.split(None, 2)[0]): line.split(None, 2)[1:] for line in ps.splitlines()}
    assert rows[sup] == ["tuninetd", f"{SUPERVISOR} {d.name} down"]
    assert rows[exe] == ["tuninetd-exec", f"{EXECUTOR} {d.name} idle"]
    assert rows[sen] == ["tuninetd-pcap", f"{SENSOR} armed"]
    tree = {sup, exe, sen}
    assert pgrep("tuninetd") & tree == {sup}
    assert pgrep("tuninetd-exec") & tree == {exe}
    assert pgrep("tuninetd-pcap") & tree == {sen}

    # Up: the start command runs (and sleeps); the titles say so.
    lab.send_frame(FRAME)
    m = wait_title(exe, rf"{EXECUTOR} {d.name} running start pid (\d+)")
    command = psutil.Process(int(m.group(1))).cmdline()
    assert command[-2:] == [str(lab.folder / "record.sh"), "start"], command
    wait_title(sup, rf"{SUPERVISOR} {d.name} up idle \d+s")
    wait_title(sen, rf"{SENSOR} counting")
    assert pgrep("tuninetd-exec") & tree == {exe}  # the title change kept the comm

    # The command ends; the idle counter moves on; ttl later it is down again.
    wait_title(exe, rf"{EXECUTOR} {d.name} idle")
    wait_title(sup, rf"{SUPERVISOR} {d.name} up idle 1s", timeout=3)
    wait_title(sup, rf"{SUPERVISOR} {d.name} down", timeout=3)
    wait_title(sen, rf"{SENSOR} armed")
    wait_commands(record, ["start", "stop"])
    assert pgrep("tuninetd") & tree == {sup}
    assert pgrep("tuninetd-pcap") & tree == {sen}


# -- privilege drop ----------------------------------------------------------------


def other_account() -> pwd.struct_passwd:
    """An account that is neither root nor nobody: ``daemon``, or one made for the tests."""
    for name in ("daemon", "tndtest"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            pass
    sh("useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "tndtest",
       check=False)
    return pwd.getpwnam("tndtest")


@pytest.mark.parametrize("account", ["default", "other"])
def test_sensor_drops_every_privilege(lab: Lab, account: str) -> None:
    if account == "default":
        pw = default_sensor_account()
        run = lab.run(ttl=5)
        d = run.daemon
    else:
        pw = other_account()
        run = lab.run("--user", pw.pw_name, ttl=5)
        d = run.daemon
    assert pw.pw_uid != 0
    sen = worker(d, SENSOR, "armed")
    st = proc_status(sen)
    assert st["Uid"].split() == [str(pw.pw_uid)] * 4, st["Uid"]
    assert st["Gid"].split() == [str(pw.pw_gid)] * 4, st["Gid"]
    assert st["Groups"] == ""
    for cap in ("CapEff", "CapPrm", "CapInh", "CapAmb", "CapBnd"):
        assert int(st[cap], 16) == 0, f"{cap} {st[cap]}"
    assert st["NoNewPrivs"] == "1"
    # The supervisor stays root, and the sensor still works unprivileged.
    assert proc_status(d.pid)["Uid"].split() == ["0"] * 4
    lab.send_frame(FRAME)
    wait_title(sen, rf"{SENSOR} counting")


# -- sensors killed or frozen --------------------------------------------------------


def test_sensor_frozen_is_killed_after_ten_silent_beats(lab: Lab) -> None:
    run = lab.run(ttl=5)
    d, record = run.daemon, run.record
    old = worker(d, SENSOR, "armed")
    os.kill(old, signal.SIGSTOP)
    stopped = time.monotonic()
    d.wait_log(f"CORE: sensor pcap tap0 (pid {old}) silent for {SILENT_BEATS} beats: "
               "killing it", timeout=5)
    silent_for = time.monotonic() - stopped
    # Correctness, the watchdog's promise: a frozen worker is found within
    # SILENT_BEATS beats (its last heartbeat came at most HEARTBEAT_BEATS
    # beats before the SIGSTOP), not before.
    assert ((SILENT_BEATS - HEARTBEAT_BEATS) * BEAT <= silent_for
            <= SILENT_BEATS * BEAT + SLACK)
    d.wait_log(f"CORE: sensor pcap tap0 (pid {old}) was silent; restarting it in")
    wait_gone([old], 2)  # killed while stopped: no SIGCONT needed
    new = worker(d, SENSOR, "armed", not_pid=old, timeout=5)
    d.wait_log(f"CORE: sensor pcap tap0 is back (pid {new})")
    lab.send_frame(FRAME)
    wait_commands(record, ["start"])


# -- a hung command ------------------------------------------------------------------

# The start command hangs; its child ignores SIGTERM; that child's child goes
# into its own session and leaves a daemon of its own plus an orphan (which
# the executor, as subreaper, adopts). Each writes its pid down.
HUNG_START = """\
D={d}
if [ "$1" = start ]; then
  echo $$ > $D/start.pid
  $D/child.sh &
  exec sleep 1000
fi
"""
HUNG_CHILD = """\
#!/bin/sh
D={d}
trap '' TERM
echo $$ > $D/child.pid
setsid $D/grand.sh &
sleep 1000
"""
HUNG_GRAND = """\
#!/bin/sh
D={d}
echo $$ > $D/grand.pid
( sleep 1000 & echo $! > $D/orphan.pid )
sleep 1000 &
echo $! > $D/bg.pid
wait
"""


# How the timeout and the executor's loss are logged, with the run's cgroup
# and on the fallback (no cgroup2 mounted where the daemon runs).
KILLED_TREE = {
    True: "killed with its process tree, through its cgroup",
    False: "killed with the processes that kept its TUNINETD_RUN_ID; any that dropped it "
           "may survive",
}
KILLED_RUN = {
    True: "process(es) of it killed through its cgroup",
    False: "process(es) of it that kept its TUNINETD_RUN_ID killed; any that dropped it "
           "may survive",
}


# Run as the --exec-user: writes itself into the daemon's cgroup (the parent
# of its run's), as the review did, then hangs.
ESCAPE = """#!/bin/sh
[ "$1" = start ] || exit 0
daemon=$(dirname "$(sed -n 's/^0:://p' /proc/self/cgroup)")
if echo 0 > "/sys/fs/cgroup$daemon/cgroup.procs" 2>/dev/null; then
    echo "$daemon" > {out}/escaped.$TUNINETD_RUN_ID
fi
echo $$ > {out}/pid.$TUNINETD_RUN_ID
exec sleep 1000
"""


def test_an_exec_user_command_cannot_leave_its_runs_cgroup(
        veth: Netns, start_daemon: Callable[..., Daemon]) -> None:
    """With --exec-user nobody, a start command writes itself into the
    daemon's cgroup.procs, then hangs. Refused: it stays in its run's cgroup
    and is killed with it at the timeout, the first run (whose cgroup the
    executor made as root) and a later one (made by the supervisor and
    handed over). Before, the daemon's cgroup was nobody's: the command left
    its run and outlived the timeout's "killed ... through its cgroup", and
    the daemon."""
    nobody = pwd.getpwnam("nobody")
    with public_folder("tnd-exec-user-") as folder:
        out = folder / "out"
        out.mkdir()
        os.chown(out, nobody.pw_uid, nobody.pw_gid)
        script = folder / "escape.sh"
        script.write_text(ESCAPE.format(out=out))
        script.chmod(0o755)
        d = start_daemon(veth, "-i", "tap0", "-f", f"udp port {PORT}", "-c", str(script),
                         "--exec-user", "nobody", "--command-timeout", "1", "-t", "1",
                         "--beat", str(BEAT))
        ready(d)
        pids = []
        for n, run_id in enumerate((1, 3), start=1):  # run 2 is the stop between
            veth.sender().send(FRAME)
            pids += wait_pids(out / f"pid.{run_id}")
            d.wait_log("Warning! Executable command timed out after 1 s and was "
                       f"{KILLED_TREE[True]}", count=n)
            wait_gone(pids, 3)
            d.wait_log("CORE: executing STOP command...", count=n)
        assert sorted(p.name for p in out.iterdir()) == ["pid.1", "pid.3"], [
            (p.name, p.read_text()) for p in out.iterdir()]
        assert d.stop() == 0, d.text()
        assert "cannot move into the cgroup" not in d.text(), d.text()


def cgroup2_mounts_of(pid: int | str) -> list[str]:
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line for line in f if " - cgroup2 " in line]


def test_under_ip_netns_exec_the_daemon_mounts_cgroup2_for_itself(
        veth: Netns, start_daemon: Callable[..., Daemon], tmp_path: Path) -> None:
    """``ip netns exec`` gives the daemon a mount namespace of its own with a
    fresh /sys and no cgroup2 (before, its executor ran on the fallback and
    said so at every start). The daemon mounts cgroup2 there, seen by no one
    else; a command that left its session and environment is killed through
    its cgroup at the timeout, and nothing is said about a missing cgroup."""
    host_mounts = cgroup2_mounts_of("self")

    def own_mount(ns: Netns, *args: str, cgroup2: bool) -> Daemon:
        return start_daemon(ns, *args, cgroup2=False, can_mount=True)

    lab = Lab(veth, tmp_path, own_mount, BEAT, args=("-i", "tap0", "-f", f"udp port {PORT}"))
    escapee = tmp_path / "escapee.pid"
    try:
        run = lab.run("--command-timeout", "1", ttl=1, body=(
            f"[ \"$1\" = start ] && {{ setsid env -i sh -c 'echo $$ > {escapee}; "
            "exec sleep 1000' & sleep 1000; }; exit 0"))
        d = run.daemon
        lab.send_frame(FRAME)
        pid = wait_pids(escapee)[0]
        d.wait_log("Warning! Executable command timed out after 1 s and was "
                   f"{KILLED_TREE[True]}")
        wait_gone([pid], 3)
        assert "no cgroup" not in d.text(), d.text()
        mounted = cgroup2_mounts_of(d.pid)
        assert [line.split()[4] for line in mounted] == ["/sys/fs/cgroup"], mounted
        assert cgroup2_mounts_of("self") == host_mounts
    finally:
        lab.close()


@pytest.mark.parametrize("cgroup2", [True, False], ids=["cgroup", "fallback"])
def test_hung_start_neither_stalls_capture_nor_the_ttl_clock(lab: Lab, cgroup2: bool) -> None:
    f = lab.folder
    for name, text in (("child.sh", HUNG_CHILD), ("grand.sh", HUNG_GRAND)):
        (f / name).write_text(text.format(d=f))
        (f / name).chmod(0o755)
    timeout = 2
    run = lab.run("--command-timeout", str(timeout), ttl=1,
                  body=HUNG_START.format(d=f), cgroup2=cgroup2)
    d, record = run.daemon, run.record
    sup = d.pid
    sen = worker(d, SENSOR, "armed")
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")

    lab.send_frame(FRAME)
    wait_commands(record, ["start"])
    started = time.monotonic()
    names = ("start", "child", "grand", "orphan", "bg")
    hung = wait_pids(*(f / f"{n}.pid" for n in names))
    wait_for("the child's sleep", lambda: psutil.Process(hung[1]).children())
    wait_title(exe, rf"{EXECUTOR} {d.name} running start pid {hung[0]}")
    # Every process of the tree, including the sleeps the shells run.
    tree = set(hung)
    for pid in hung:
        with contextlib.suppress(psutil.Error):
            tree.update(p.pid for p in psutil.Process(pid).children(recursive=True))
    wait_for("the orphan adopted by the executor (subreaper)",
             lambda: psutil.Process(hung[3]).ppid() == exe)

    # Traffic goes on past the ttl while the command hangs: the sensor counts,
    # its beats keep the supervisor up with the idle counter at 0.
    seen = set()
    while time.monotonic() - started < 1.6:
        lab.send_frame(FRAME)
        seen.add((title(sup), title(sen), title(exe)))
        time.sleep(0.05)
    last_before = time.monotonic()
    lab.send_frame(FRAME)
    last_after = time.monotonic()
    assert seen == {(f"{SUPERVISOR} {d.name} up idle 0s", f"{SENSOR} counting",
                     f"{EXECUTOR} {d.name} running start pid {hung[0]}")}, seen
    assert not any(gone(p) for p in tree), "the tree died before its timeout"

    # Traffic stops: the stop decision comes ttl later, on time, although the
    # start command has not finished (it is being killed by now).
    wait_title(sup, rf"{SUPERVISOR} {d.name} down", timeout=5)
    decided = time.monotonic()
    # Correctness, the ttl's promise: stop is decided ttl after the last packet,
    # at the next beat, however long the start command hangs.
    assert last_before + 1 <= decided <= last_after + 1 + BEAT + SLACK
    wait_title(sen, rf"{SENSOR} armed", timeout=1)
    assert title(exe) == f"{EXECUTOR} {d.name} running start pid {hung[0]}"
    assert "CORE: executing STOP command..." not in d.text()
    assert kinds(record) == ["start"]

    # At the timeout the whole tree is killed (SIGTERM, then SIGKILL for the
    # part that ignores it); then the stop runs at once.
    all_gone = wait_gone(sorted(tree), timeout + TERM_GRACE + 3)
    # Correctness, --command-timeout's promise: not killed before it, and gone
    # by its end plus the TERM-to-KILL grace.
    assert all_gone - started >= timeout
    assert all_gone - started <= timeout + TERM_GRACE + 1 + SLACK
    wait_commands(record, ["start", "stop"])
    log = d.text()
    assert re.search(r"Warning! Executable command timed out after 2 s and was "
                     + re.escape(KILLED_TREE[cgroup2]) + r" \(.*record\.sh start\)", log), log
    lines = d.lines()
    timed_out = next(i for i, line in enumerate(lines) if "timed out" in line)
    stop = lines.index("CORE: executing STOP command...")
    assert timed_out < stop, log
    assert lines.count("CORE: executing STOP command...") == 1
    wait_title(exe, rf"{EXECUTOR} {d.name} idle")


# -- the supervisor killed -----------------------------------------------------------


@pytest.mark.parametrize("while_", ["idle", "running"])
def test_supervisor_killed_takes_every_worker_along(lab: Lab, while_: str) -> None:
    run = lab.run(body='[ "$1" = start ] && sleep 1000\nexit 0', ttl=5)
    d = run.daemon
    exe = worker(d, f"{EXECUTOR} {d.name}", "idle")
    sen = worker(d, SENSOR, "armed")
    pids = [exe, sen]
    if while_ == "running":
        lab.send_frame(FRAME)
        m = wait_title(exe, rf"{EXECUTOR} {d.name} running start pid (\d+)")
        command = int(m.group(1))
        pids += [command, *(p.pid for p in psutil.Process(command).children(recursive=True))]
    os.kill(d.pid, signal.SIGKILL)
    d.proc.wait(5)
    # Correctness: every worker and command goes with the supervisor (no
    # orphan left). How fast (the fault table says 2 s) is not judged here.
    wait_gone(pids, 10.0)
    assert not [p for p in lab.ns.pids() if not gone(p)]


# -- the executor killed -------------------------------------------------------------


def test_executor_killed_while_idle_is_replaced(lab: Lab) -> None:
    run = lab.run(ttl=5)
    d, record = run.daemon, run.record
    old = worker(d, f"{EXECUTOR} {d.name}", "idle")
    os.kill(old, signal.SIGKILL)
    d.wait_log(f"CORE: executor (pid {old}) killed by signal 9 (SIGKILL); "
               f"restarting it in {BACKOFF_FIRST:.1f} s")
    new = worker(d, f"{EXECUTOR} {d.name}", "idle", not_pid=old, timeout=5)
    d.wait_log(f"CORE: executor is back (pid {new})")
    lab.send_frame(FRAME)
    wait_commands(record, ["start"])
    d.wait_log("PCAP: start command done")


# The first start hangs with a tree (a child, and an orphan the executor adopts).
HANG_ONCE = """\
D={d}
if [ "$1" = start ] && [ ! -e $D/hung-once ]; then
  : > $D/hung-once
  sleep 1000 &
  echo $! > $D/bg.pid
  ( setsid sleep 1000 & echo $! > $D/orphan.pid )
  echo $$ > $D/start.pid
  exec sleep 1000
fi
"""


@pytest.mark.parametrize("cgroup2", [True, False], ids=["cgroup", "fallback"])
def test_executor_killed_while_a_command_runs(lab: Lab, cgroup2: bool) -> None:
    run = lab.run(ttl=1, body=HANG_ONCE.format(d=lab.folder), cgroup2=cgroup2)
    d, record = run.daemon, run.record
    old = worker(d, f"{EXECUTOR} {d.name}", "idle")
    lab.send_frame(FRAME)
    tree = wait_pids(*(lab.folder / f"{n}.pid" for n in ("start", "bg", "orphan")))
    wait_title(old, rf"{EXECUTOR} {d.name} running start pid {tree[0]}")
    wait_for("the orphan adopted by the executor (subreaper)",
             lambda: psutil.Process(tree[2]).ppid() == old)
    os.kill(old, signal.SIGKILL)

    # The supervisor (subreaper) finds the orphaned tree and kills it.
    lines = d.wait_log("CORE: executor died while running the start command")
    assert lines[0] == ("CORE: executor died while running the start command; "
                        f"{len(tree)} {KILLED_RUN[cgroup2]}; the command counts as failed")
    wait_gone(tree, 2)
    d.wait_log(f"CORE: executor (pid {old}) killed by signal 9 (SIGKILL); restarting it in")
    new = worker(d, f"{EXECUTOR} {d.name}", "idle", not_pid=old, timeout=5)
    d.wait_log(f"CORE: executor is back (pid {new})")

    # Still up: ttl later the stop runs on the new executor, then a new start.
    wait_commands(record, ["start", "stop"], timeout=5)
    worker(d, SENSOR, "armed")
    lab.send_frame(FRAME)
    wait_commands(record, ["start", "stop", "start"])
    d.wait_log("PCAP: start command done")
    assert d.text().count("PCAP: start command done") == 1  # the killed start is no success


# -- shutdown ----------------------------------------------------------------------


def test_sigterm_lets_the_running_command_finish_and_drops_the_queued_one(lab: Lab) -> None:
    run = lab.run(ttl=30, body='[ "$1" = start ] && sleep 1.5\nexit 0')
    d, record = run.daemon, run.record
    lab.send_frame(FRAME)
    worker(d, f"{EXECUTOR} {d.name}", "running start")
    d.proc.send_signal(signal.SIGHUP)  # stop now: queued behind the running start
    d.wait_log("SIGHUP caught, switch to standby mode")
    d.proc.send_signal(signal.SIGTERM)
    d.wait_log("CORE: dropping the queued stop command")
    assert d.proc.wait(10) == 0
    log = d.text()
    # The start ran to its end (its "done" line is logged); the stop never ran.
    assert log.index("dropping the queued stop") < log.index("PCAP: start command done")
    assert kinds(record) == ["start"]
    assert "executing STOP" not in log


# -- the supervisor's privilege check --------------------------------------------------


def execed_sleep(pid: int) -> bool:
    return bool(psutil.Process(pid).name() == "sleep")


def test_privilege_check_tells_a_dropped_process_from_a_privileged_one() -> None:
    """What the supervisor runs on each sensor's hello, on real processes: a
    root process is refused; one dropped like a sensor but without a seccomp
    filter (setpriv installs none) is refused for that alone. A real sensor
    passing it is in tests/test_sandbox.py."""
    from tuninetd.supervisor.sandbox.jail import empty_dir
    from tuninetd.supervisor.sandbox.privcheck import privileges_left

    nobody = pwd.getpwnam("nobody")
    root_proc = subprocess.Popen(["sleep", "30"])
    dropped = subprocess.Popen([
        "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
        "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "sleep", "30",
    ])
    kept_bounding = subprocess.Popen([
        "setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups",
        "--inh-caps=-all", "--no-new-privs", "sleep", "30",
    ])
    try:
        for pid in (dropped.pid, kept_bounding.pid):
            wait_for("setpriv to exec sleep", functools.partial(execed_sleep, pid))
        assert privileges_left(root_proc.pid, nobody.pw_uid, nobody.pw_gid)
        assert privileges_left(dropped.pid, nobody.pw_uid, nobody.pw_gid) == ["Seccomp 0"]
        # Right account but a different one than configured: refused as well.
        assert privileges_left(dropped.pid, nobody.pw_uid + 1, nobody.pw_gid)
        # Its root is / rather than the sensors' jail.
        jail = empty_dir()
        assert privileges_left(dropped.pid, nobody.pw_uid, nobody.pw_gid, jail) == [
            "Seccomp 0", f"root /, not {jail}"]
        # Everything dropped but the bounding set.
        assert privileges_left(kept_bounding.pid, nobody.pw_uid, nobody.pw_gid) == [
            f"CapBnd {proc_status(kept_bounding.pid)['CapBnd']}", "Seccomp 0"]
    finally:
        for p in (root_proc, dropped, kept_bounding):
            p.kill()
            p.wait()


def test_a_bounding_set_that_cannot_be_emptied_fails_the_drop() -> None:
    """drop_privileges started without CAP_SETPCAP (so every PR_CAPBSET_DROP
    fails with EPERM) refuses to go on; it used to stop dropping at the
    first failure and carry on with the whole bounding set."""
    nobody = pwd.getpwnam("nobody")
    code = ("import os, sys; from tuninetd.common import worker\n"
            "try:\n"
            f"    worker.drop_privileges({nobody.pw_uid}, {nobody.pw_gid}, os.getppid())\n"
            "except OSError as exc:\n"
            "    print(type(exc).__name__, exc); sys.exit(3)\n"
            "print(open('/proc/self/status').read())\n")
    r = subprocess.run(["setpriv", "--bounding-set=-setpcap", sys.executable, "-c", code],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 3, r.stdout + r.stderr
    assert r.stdout.startswith("PermissionError"), r.stdout


def test_sensors_import_nothing_beyond_the_stdlib() -> None:
    """Sensors start fast and small: no scapy, nothing heavy, at run time;
    not even a seccomp binding (the supervisor builds their allow-list), nor
    typing (half a MiB in each sensor)."""
    import sys

    # Without site, as workers run: nothing is imported before but the core.
    code = (
        "import sys\n"
        f"sys.path[:0] = {[p for p in sys.path if p]!r}\n"
        "before = set(sys.modules)\n"
        "import tuninetd.sensors.pcap, tuninetd.sensors.nflog\n"
        "print('\\n'.join(sorted(set(sys.modules) - before)))"
    )
    out = subprocess.run([sys.executable, "-S", "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    assert "tuninetd.sensors.pcap" in out
    foreign = {m.split(".")[0] for m in out} - set(sys.stdlib_module_names) - {
        "tuninetd", "setproctitle", "_setproctitle"}
    assert foreign == set()
    assert "typing" not in out
