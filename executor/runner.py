"""One command run: the request, the spawned process, its timeout and its end."""

from __future__ import annotations

import os
import subprocess
from typing import TYPE_CHECKING, Any, NamedTuple

from tuninetd.common import wire
from tuninetd.executor.output import Output

if TYPE_CHECKING:
    from tuninetd.executor.tree import TreeKill

EVENTS = ("start", "stop")
# In every command's environment: tells the processes of one run, wherever
# they went (setsid, daemons), from everything else (tree.py).
RUN_ID_VAR = "TUNINETD_RUN_ID"


class Request(NamedTuple):
    id: int
    event: str
    argv: list[str]
    env: dict[str, str]


def parse_request(msg: wire.Message) -> Request:
    run_id, event, argv, env = (msg.get(k) for k in ("id", "event", "argv", "env"))
    if not isinstance(run_id, int) or isinstance(run_id, bool):
        raise ValueError("run: id must be an integer")
    if event not in EVENTS:
        raise ValueError("run: event must be start or stop")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise ValueError("run: argv must be a non-empty list of strings")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("run: env must map strings to strings")
    return Request(run_id, event, argv, env)


class SpawnError(Exception):
    """The command could not be started at all; the message says why."""


def spawn(request: Request) -> subprocess.Popen[bytes]:
    # The daemon's own environment (inherited from the supervisor) plus the
    # event's variables: the run message carries only the latter.
    env = {**os.environ, **request.env, RUN_ID_VAR: str(request.id)}
    try:
        return subprocess.Popen(
            request.argv,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    except OSError as exc:
        raise SpawnError(f"{request.argv[0]}: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte in argv or env
        raise SpawnError(str(exc)) from None


class Run:
    """A spawned command until its process has exited and, if it had to be
    killed, until nothing of it is left."""

    def __init__(self, request: Request, timeout: float, now: float) -> None:
        self.id = request.id
        self.event = request.event
        self.popen = spawn(request)
        self.pid = self.popen.pid
        # Completion is the process exit, seen on a pidfd: the output pipe may
        # stay open for as long as a daemon started by the command lives.
        self.pidfd = os.pidfd_open(self.pid)
        assert self.popen.stdout is not None
        self.output = Output(self.id, self.popen.stdout)
        self.started = now
        self.deadline = now + timeout if timeout > 0 else None
        self.duration: float | None = None
        self.killer: TreeKill | None = None
        self.timed_out = False

    @property
    def exited(self) -> bool:
        return self.duration is not None

    @property
    def over(self) -> bool:
        return self.exited and (self.killer is None or self.killer.finished)

    @property
    def unreaped_pid(self) -> int | None:
        return None if self.exited else self.pid

    def reap(self, now: float) -> bool:
        """Collect the exit status once the pidfd says the process is gone."""
        if self.exited or self.popen.poll() is None:
            return False
        self.duration = now - self.started
        if self.killer is not None:
            self.killer.root_reaped()
        return True

    def timeout_due(self, now: float) -> bool:
        return (
            self.deadline is not None
            and now >= self.deadline
            and not self.exited
            and self.killer is None
        )

    def kill(self, now: float, timed_out: bool) -> None:
        if self.killer is None:
            from tuninetd.executor import tree

            self.timed_out = timed_out
            self.killer = tree.TreeKill(self.id, self.unreaped_pid, now)

    def kill_now(self) -> None:
        from tuninetd.executor import tree

        tree.kill_now(self.id, self.unreaped_pid)

    def next_deadline(self) -> float | None:
        times = [self.output.deadline()]
        if self.killer is not None and not self.killer.finished:
            times.append(self.killer.next_step)
        elif not self.exited:
            times.append(self.deadline)
        return min((t for t in times if t is not None), default=None)

    def done_fields(self) -> dict[str, Any]:
        rc = self.popen.returncode
        return {
            "id": self.id,
            "rc": rc if rc >= 0 else None,
            "sig": -rc if rc < 0 else None,
            "dur": round(self.duration or 0.0, 3),
            "timeout": self.timed_out,
            "error": None,
        }
