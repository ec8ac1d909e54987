"""The executor process for real: started the way the supervisor starts it,
spoken to over a SOCK_SEQPACKET socketpair, running real scripts."""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import re
import select
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from tests.support.netlab import gone, wait_gone
from tests.support.timing import BEAT, SILENT_BEATS
from tuninetd.common import cgroup, wire
from tuninetd.common.worker import HEARTBEAT_BEATS

PATH_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin"}
# Records pids atomically (write then rename) so a test never reads half a pid.
NOTE_PID = """
import os, signal, sys, time
def note(name):
    path = os.path.join(sys.argv[1], name)
    with open(path + ".tmp", "w") as f:
        f.write(str(os.getpid()))
    os.rename(path + ".tmp", path)
"""


class Executor:
    """One executor process and our end of its socket."""

    def __init__(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        self.proc = proc
        self.sock = sock
        self.log: list[tuple[float, wire.Message]] = []

    def send(self, kind: str, **fields: Any) -> None:
        wire.send(self.sock, kind, **fields)

    def recv(self, deadline: float) -> wire.Message | None:
        """The next message, validated as the supervisor will; None at EOF."""
        poller = select.poll()
        poller.register(self.sock, select.POLLIN)
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not poller.poll(remaining * 1000):
            pytest.fail("no message from the executor in time")
        data = wire.recv(self.sock)
        if not data:
            return None
        msg = wire.parse(data, wire.EXECUTOR_MESSAGES)
        self.log.append((time.monotonic(), msg))
        return msg

    def expect(self, kind: str, timeout: float = 5.0) -> wire.Message:
        """The next message of that kind, skipping beats."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(deadline)
            if msg is None:
                pytest.fail(f"executor closed the socket while we waited for {kind}")
            if msg["t"] == kind:
                return msg
            assert msg["t"] == "beat", f"expected {kind}, got {msg}"

    def run(
        self, run_id: int, argv: list[str], env: dict[str, str] | None = None, timeout: float = 8
    ) -> tuple[list[wire.Message], wire.Message]:
        """Run a command; all messages of this run up to its done, and the done."""
        self.send("run", id=run_id, event="start", argv=argv, env=PATH_ENV if env is None else env)
        return self.until_done(run_id, timeout)

    def until_done(
        self, run_id: int, timeout: float = 8
    ) -> tuple[list[wire.Message], wire.Message]:
        deadline = time.monotonic() + timeout
        messages = []
        while True:
            msg = self.recv(deadline)
            if msg is None:
                pytest.fail(f"executor closed the socket before done: {self.log[-3:]}")
            if msg["t"] == "beat" or msg.get("id") != run_id:
                continue
            messages.append(msg)
            if msg["t"] == "done":
                return messages, msg

    def wait_exit(self, timeout: float = 5.0) -> int:
        return self.proc.wait(timeout)

    def close(self) -> None:
        self.sock.close()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


StartExecutor = Callable[..., Executor]


@pytest.fixture
def executor() -> Iterator[StartExecutor]:
    started: list[Executor] = []

    def start(
        timeout: float = 10.0,
        uid: int | None = None,
        gid: int | None = None,
        user: str | None = None,
        wrapper: tuple[str, ...] = (),
        stray_fds: tuple[int, ...] = (),
        first_run: int | None = None,
    ) -> Executor:
        """``wrapper`` execs the executor's command line (same pid); the
        executor inherits ``stray_fds`` as a careless parent would leave them."""
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [sys.executable, "-m", "tuninetd.executor", str(theirs.fileno()), str(os.getpid())]
        proc = subprocess.Popen(
            [*wrapper, *argv],
            pass_fds=[theirs.fileno(), *stray_fds],
            env={**os.environ, "EXECUTOR_ONLY": "1"},
        )
        theirs.close()
        ex = Executor(proc, ours)
        started.append(ex)
        first = {} if first_run is None else {"first_run": first_run}
        ex.send("config", timeout=timeout, beat=BEAT, uid=uid, gid=gid, user=user, **first)
        assert ex.expect("hello")["pid"] == proc.pid
        return ex

    yield start
    for ex in started:
        ex.close()
    # The executors' cgroups, as the supervisor removes them at exit.
    cgroup.remove_daemon_group(os.getpid())


@pytest.fixture
def doomed() -> Iterator[list[psutil.Process]]:
    """Processes a test leaves running on purpose, killed when it ends."""
    procs: list[psutil.Process] = []
    yield procs
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.kill()


def script(tmp_path: Path, name: str, text: str, mode: int = 0o755) -> str:
    path = tmp_path / name
    path.write_text(text)
    path.chmod(mode)
    return str(path)


def python_script(tmp_path: Path, name: str, body: str) -> str:
    return script(tmp_path, name, f"#!{sys.executable}\n{NOTE_PID}\n{body}")


def read_pids(directory: Path, names: list[str], timeout: float = 5.0) -> dict[str, int]:
    deadline = time.monotonic() + timeout
    while not all((directory / name).exists() for name in names):
        if time.monotonic() > deadline:
            pytest.fail(f"pid files {names} not all written in time")
        time.sleep(0.02)
    return {name: int((directory / name).read_text()) for name in names}


def lines(messages: list[wire.Message]) -> list[str]:
    return [m["line"] for m in messages if m["t"] == "out"]


def test_hello_then_beats_at_the_interval(executor: StartExecutor) -> None:
    ex = executor()
    hello_at = ex.log[-1][0]
    beats = [ex.expect("beat", timeout=2) for _ in range(4)]
    times = [at for at, msg in ex.log if msg["t"] == "beat"]
    assert all(beat == {"v": 1, "t": "beat", "n": 0, "mode": "idle"} for beat in beats)
    heartbeat = BEAT * HEARTBEAT_BEATS
    # Beats fall on a grid of the monotonic clock shared by every worker (one
    # wake-up for all), so the first may follow hello by any part of a heartbeat.
    assert 0 <= times[0] - hello_at < heartbeat + BEAT, times[0] - hello_at
    # Correctness: no busy loop (not faster than half the heartbeat), and never
    # silent long enough for the supervisor to kill it (SILENT_BEATS beats).
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert all(heartbeat * 0.5 < gap < BEAT * SILENT_BEATS for gap in gaps), gaps


def test_output_lines_in_order_then_done(executor: StartExecutor, tmp_path: Path) -> None:
    cmd = script(tmp_path, "talk", "#!/bin/sh\necho one\necho two >&2\necho three\nprintf tail")
    messages, done = executor().run(1, [cmd])
    assert messages[0]["t"] == "started"
    assert lines(messages) == ["one", "two", "three", "tail"]
    assert done["rc"] == 0 and done["sig"] is None and done["error"] is None
    # dur is the run's length in seconds (not a timestamp, not ms): an instant
    # script's is well under the executor test's 5 s.
    assert done["timeout"] is False and 0 <= done["dur"] < 5


def test_exit_code_is_reported(executor: StartExecutor, tmp_path: Path) -> None:
    cmd = script(tmp_path, "fail", "#!/bin/sh\nexit 3\n")
    _, done = executor().run(1, [cmd])
    assert (done["rc"], done["sig"]) == (3, None)


def test_argv_is_passed_literally(executor: StartExecutor, tmp_path: Path) -> None:
    cmd = script(tmp_path, "args", '#!/bin/sh\nfor a in "$@"; do printf \'[%s]\\n\' "$a"; done\n')
    pwned = tmp_path / "pwned"
    args = ["two words", f"$(touch {pwned})", "`id`", "*", "'quoted'", ""]
    messages, done = executor().run(1, [cmd, *args])
    assert lines(messages) == [f"[{a}]" for a in args]
    assert done["rc"] == 0 and not pwned.exists()


def test_env_is_the_daemons_plus_the_events_and_the_run_id(
    executor: StartExecutor, tmp_path: Path
) -> None:
    text = (
        '#!/bin/sh\necho "FOO=$FOO"\necho "RUN=$TUNINETD_RUN_ID"\necho "OWN=${EXECUTOR_ONLY-no}"\n'
    )
    cmd = script(tmp_path, "env", text)
    messages, _ = executor().run(7, [cmd], {**PATH_ENV, "FOO": "bar $(baz)"})
    assert lines(messages) == ["FOO=bar $(baz)", "RUN=7", "OWN=1"]


def test_stdin_is_dev_null(executor: StartExecutor, tmp_path: Path) -> None:
    cmd = script(tmp_path, "stdin", "#!/bin/sh\nreadlink /proc/self/fd/0\ncat\necho end\n")
    messages, done = executor().run(1, [cmd])
    assert lines(messages) == ["/dev/null", "end"] and done["rc"] == 0


@pytest.mark.parametrize(("mode", "reason"), [(None, "No such file"), (0o644, "Permission denied")])
def test_unstartable_command_reports_the_error(
    executor: StartExecutor, tmp_path: Path, mode: int | None, reason: str
) -> None:
    cmd = str(tmp_path / "missing") if mode is None else script(tmp_path, "x", "#!/bin/sh\n", mode)
    messages, done = executor().run(1, [cmd])
    assert messages == [done]
    assert done["rc"] is None and done["sig"] is None and done["timeout"] is False
    assert reason in done["error"] and cmd in done["error"]


TREE = """
if os.fork() == 0:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            note("grandchild")
            while True:
                signal.pause()
        os._exit(0)
    note("child")
    while True:
        signal.pause()
note("parent")
while True:
    signal.pause()
"""


def test_timeout_kills_the_whole_tree_while_beats_go_on(
    executor: StartExecutor, tmp_path: Path
) -> None:
    cmd = python_script(tmp_path, "tree", TREE)
    ex = executor(timeout=1)
    sent_at = time.monotonic()
    messages, done = ex.run(1, [cmd, str(tmp_path)])
    pids = read_pids(tmp_path, ["parent", "child", "grandchild"])
    assert messages[0] == {"v": 1, "t": "started", "id": 1, "pid": pids["parent"]}
    assert done["timeout"] is True and done["sig"] == signal.SIGTERM and done["rc"] is None
    wait_gone(list(pids.values()), 3.0)
    done_at = next(at for at, msg in ex.log if msg["t"] == "done")
    beats = [sent_at] + [at for at, msg in ex.log if msg["t"] == "beat" and at > sent_at]
    # Correctness: killing a tree does not make the executor look frozen.
    assert all(b - a < BEAT * SILENT_BEATS for a, b in itertools.pairwise([*beats, done_at]))
    assert done_at - sent_at > 2.5  # the hang and the 2 s grace, covered by beats


DAEMON = """
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        note("daemon")
        print("daemon up", flush=True)
        while True:
            signal.pause()
    os._exit(0)
os.wait()
print("started a daemon", flush=True)
"""


def test_daemon_of_an_earlier_command_survives_a_timeout_kill(
    executor: StartExecutor, tmp_path: Path, doomed: list[psutil.Process]
) -> None:
    cmd = python_script(tmp_path, "daemonize", DAEMON)
    ex = executor(timeout=1)
    _, done = ex.run(1, [cmd, str(tmp_path)], timeout=3)
    daemon = read_pids(tmp_path, ["daemon"])["daemon"]
    doomed.append(psutil.Process(daemon))
    assert done["rc"] == 0 and done["timeout"] is False  # though the daemon holds the pipe
    _, done = ex.run(2, ["sleep", "30"])
    assert done["timeout"] is True
    assert not gone(daemon)


# Children that leave everything behind: a new session and a clean
# environment (no TUNINETD_RUN_ID), one of them double-forked so that it is
# not even a descendant of the command any more. Each prints its pid.
ESCAPE = """
setsid env -i sh -c 'echo clean $$; exec sleep 1000' &
setsid env -i sh -c 'sh -c "echo double \\$\\$; exec sleep 1000" &' &
exec sleep 1000
"""


def escapees(ex: Executor) -> dict[str, int]:
    """Run ESCAPE as run 1 and wait until both escapees are in place."""
    ex.send("run", id=1, event="start", argv=["sh", "-c", ESCAPE], env=PATH_ENV)
    pids = {"start": ex.expect("started")["pid"]}
    while len(pids) < 3:
        name, pid = ex.expect("out")["line"].split()
        pids[name] = int(pid)
    double = psutil.Process(pids["double"])
    wait_for_true(lambda: double.ppid() == ex.proc.pid)  # the orphan adopted by the executor
    for pid in pids.values():
        assert not gone(pid)
    for name in ("clean", "double"):
        assert "TUNINETD_RUN_ID" not in psutil.Process(pids[name]).environ()
    return pids


def wait_for_true(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail("condition not met in time")
        time.sleep(0.02)


def test_timeout_kills_what_left_session_and_environment_through_the_cgroup(
    executor: StartExecutor,
) -> None:
    ex = executor(timeout=1)
    pids = escapees(ex)
    _, done = ex.until_done(1)
    assert done["timeout"] is True and done["killed"] == "cgroup"
    wait_gone(list(pids.values()), timeout=1)


def test_a_command_starts_in_its_runs_cgroup_where_the_executor_waited(
    executor: StartExecutor,
) -> None:
    """The executor waits in the cgroup of the run it expects next, so that
    the command starts there with no migration on its way; a run numbered
    otherwise is moved into first. Either way the executor has left the
    run's cgroup by the time the run is done."""
    if not cgroup.cgroup2_mounts():
        pytest.skip("no cgroup2 mounted here: the executor runs on the fallback")
    ex = executor(first_run=7)
    runs = f"/tuninetd-{os.getpid()}/run-"
    assert cgroup.cgroup_of(ex.proc.pid).endswith(f"{runs}7")
    for run_id in (7, 8, 12):  # 12: not the one it waited for
        messages, done = ex.run(run_id, ["grep", "^0::", "/proc/self/cgroup"])
        assert done["rc"] == 0 and lines(messages)[0].endswith(f"{runs}{run_id}"), messages
        assert cgroup.cgroup_of(ex.proc.pid).endswith(f"{runs}{run_id + 1}")


def read_only_cgroups() -> tuple[str, ...]:
    """A wrapper that runs the executor with every cgroup2 mount read-only, in
    a mount namespace of its own (the rest of the host keeps them writable)."""
    if shutil.which("unshare") is None:
        pytest.fail("needs unshare (util-linux)")
    mounts = [mount for _, mount in cgroup.cgroup2_mounts()]
    if not mounts:
        pytest.skip("no cgroup2 mounted here: every executor runs on the fallback")
    remounts = " && ".join(f"mount -o remount,bind,ro {shlex.quote(m)}" for m in mounts)
    return ("unshare", "-m", "--propagation", "private", "sh", "-c",
            f'{remounts} && exec "$@"', "sh")


def test_without_a_writable_cgroup_the_fallback_says_what_it_cannot_kill(
    executor: StartExecutor, doomed: list[psutil.Process]
) -> None:
    ex = executor(timeout=1, wrapper=read_only_cgroups())
    reason = ex.expect("error")["reason"]
    assert re.fullmatch(
        r"no cgroup for the commands \(.*Read-only file system\): a timed-out command is "
        r"killed through its TUNINETD_RUN_ID marker, and processes that drop it may survive; "
        r"to kill the whole tree, run under systemd \(the units delegate a cgroup\) or mount "
        r"cgroup2 on /sys/fs/cgroup \(Linux 5.14 or later\)",
        reason,
    ), reason
    pids = escapees(ex)
    doomed.append(psutil.Process(pids["double"]))
    _, done = ex.until_done(1)
    assert done["timeout"] is True and done["killed"] == "marker"
    wait_gone([pids["start"], pids["clean"]], timeout=1)
    # What the message warns of: the double-forked one without the marker is
    # out of the fallback's sight.
    assert not gone(pids["double"])


def test_a_command_gets_only_0_1_2_whatever_the_executor_inherited(
    executor: StartExecutor, tmp_path: Path
) -> None:
    secret = os.open("/etc/shadow", os.O_RDONLY)
    left, right = socket.socketpair()
    try:
        stray = (secret, left.fileno())
        ex = executor(timeout=1, stray_fds=stray)
        held = {os.readlink(f"/proc/{ex.proc.pid}/fd/{fd}") for fd in stray}
        assert "/etc/shadow" in held  # the executor really holds them
        ex.send("run", id=1, event="start", argv=["sh", "-c", "exec sleep 1000"], env=PATH_ENV)
        pid = ex.expect("started")["pid"]
        wait_for_true(lambda: psutil.Process(pid).name() == "sleep")
        fds = {int(fd): os.readlink(f"/proc/{pid}/fd/{fd}") for fd in os.listdir(f"/proc/{pid}/fd")}
        _, done = ex.until_done(1)
    finally:
        os.close(secret)
        left.close()
        right.close()
    assert sorted(fds) == [0, 1, 2], fds
    assert fds[0] == "/dev/null" and fds[1] == fds[2] and fds[1].startswith("pipe:")
    assert done["timeout"] is True


def test_chatty_command_is_rate_limited(executor: StartExecutor) -> None:
    chatty = [sys.executable, "-c", "for i in range(10000): print(i)"]
    messages, done = executor().run(1, chatty, {})
    out = lines(messages)
    notices = [int(m.group(1)) for line in out if (m := re.search(r"(\d+) more output", line))]
    forwarded = len(out) - len(notices)
    assert done["rc"] == 0 and notices
    assert forwarded <= 100 and forwarded + sum(notices) == 10000
    assert out[:10] == [str(i) for i in range(10)]


def test_run_while_busy_is_refused(executor: StartExecutor) -> None:
    ex = executor()
    ex.send("run", id=1, event="start", argv=["sleep", "0.3"], env=PATH_ENV)
    ex.expect("started")
    ex.send("run", id=2, event="stop", argv=["true"], env=PATH_ENV)
    error = ex.expect("error")
    assert error["fatal"] is False and "run 2 refused" in error["reason"]
    _, done = ex.until_done(1)
    assert done["rc"] == 0


def test_quit_lets_the_running_command_finish(executor: StartExecutor) -> None:
    ex = executor()
    ex.send("run", id=1, event="stop", argv=["sh", "-c", "sleep 0.5; echo finished"], env=PATH_ENV)
    ex.expect("started")
    ex.send("quit")
    messages, done = ex.until_done(1)
    assert lines(messages) == ["finished"] and done["rc"] == 0
    rest = []  # until its channel closes: at most a last heartbeat, no other record
    while (msg := ex.recv(time.monotonic() + 5)) is not None:
        rest.append(msg)
    assert [m for m in rest if m["t"] != "beat"] == []
    assert ex.wait_exit() == 0


FAMILY = """
if os.fork() == 0:
    note("child")
    while True:
        signal.pause()
note("parent")
while True:
    signal.pause()
"""


@pytest.mark.parametrize("how", ["eof", "sigterm"])
def test_supervisor_gone_kills_the_command_and_exits(
    executor: StartExecutor, tmp_path: Path, how: str
) -> None:
    cmd = python_script(tmp_path, "family", FAMILY)
    ex = executor()
    ex.send("run", id=1, event="start", argv=[cmd, str(tmp_path)], env=PATH_ENV)
    ex.expect("started")
    pids = read_pids(tmp_path, ["parent", "child"])
    if how == "eof":
        ex.sock.close()
    else:
        ex.proc.send_signal(signal.SIGTERM)
    assert ex.wait_exit() == 0
    wait_gone(list(pids.values()), 3.0)


def hand_cgroup(ex: Executor, run_id: int) -> None:
    fds = cgroup.prepare(os.getpid(), run_id)
    socket.send_fds(ex.sock, [wire.encode("cgroup", id=run_id)], list(fds))
    for fd in fds:
        os.close(fd)


def test_exec_user(executor: StartExecutor) -> None:
    if os.geteuid() != 0:
        if os.environ.get("CI") == "true":
            pytest.fail("switching the executor's user needs root")
        pytest.skip("switching the executor's user needs root")
    nobody = pwd.getpwnam("nobody")
    ex = executor(timeout=1, uid=nobody.pw_uid, gid=nobody.pw_gid, user="nobody")
    assert psutil.Process(ex.proc.pid).uids().real == nobody.pw_uid
    messages, done = ex.run(1, ["sh", "-c", "id -u; grep ^0:: /proc/self/cgroup"])
    assert lines(messages)[0] == str(nobody.pw_uid) and done["rc"] == 0
    # Though unprivileged, the executor put it into its run's cgroup.
    assert lines(messages)[1].endswith(f"/tuninetd-{os.getpid()}/run-1"), lines(messages)
    # The supervisor's part (we are the executor's supervisor here): the next
    # run's cgroup, made as root, handed over as two descriptors once a run
    # is on its way.
    hand_cgroup(ex, 2)
    ex.send("run", id=2, event="start", argv=["sh", "-c", "grep ^0:: /proc/self/cgroup; "
                                                        "exec sleep 1000"], env=PATH_ENV)
    hand_cgroup(ex, 3)
    messages, done = ex.until_done(2)
    assert lines(messages)[0].endswith(f"/tuninetd-{os.getpid()}/run-2"), ex.log
    assert done["timeout"] is True and done["killed"] == "cgroup"
    # Nothing of the tree is nobody's: no command of it can move itself.
    tree = cgroup.daemon_group(os.getpid())
    owners = {os.stat(os.path.join(top, name)).st_uid
              for top, dirs, files in os.walk(tree) for name in (*dirs, *files)}
    assert owners == {0}, owners


def test_command_starts_with_default_signal_dispositions(executor: StartExecutor) -> None:
    # Started as by a careless parent that ignores SIGQUIT and SIGUSR2 (Python
    # itself ignores SIGPIPE and SIGXFSZ).
    ignoring = ("sh", "-c", "trap '' QUIT USR2; exec \"$@\"", "sh")
    ex = executor(wrapper=ignoring)
    with open(f"/proc/{ex.proc.pid}/status") as f:
        ours = int(next(line for line in f if line.startswith("SigIgn:")).split()[1], 16)
    assert ours & (1 << (signal.SIGQUIT - 1)) and ours & (1 << (signal.SIGPIPE - 1)), hex(ours)
    messages, _ = ex.run(1, ["grep", "SigIgn", "/proc/self/status"])
    mask = int(lines(messages)[0][-16:], 16)  # "SigIgn:" and a tab (sent as "?") first
    ignored = {sig for sig in range(1, 65) if mask & (1 << (sig - 1))}
    # Nothing ignored, not even SIGHUP or SIGPIPE. glibc's posix_spawn leaves
    # its two reserved real-time signals (32, 33: no valid_signals() member,
    # glibc takes them over when it needs them) ignored, as for any program
    # it spawns.
    assert not ignored & set(signal.valid_signals()), ignored


def test_long_and_unprintable_lines_are_cut_and_cleaned(executor: StartExecutor) -> None:
    code = "import sys; sys.stdout.write('x' * 100000 + '\\nnext\\r\\n\\x1b[31mred\\n')"
    messages, done = executor().run(1, [sys.executable, "-c", code], {})
    assert lines(messages) == ["x" * wire.MAX_TEXT, "next", "?[31mred"] and done["rc"] == 0
