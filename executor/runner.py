"""One command run: the request, the spawned process, its timeout and its end."""

from __future__ import annotations

import os
import subprocess
from typing import Any, NamedTuple

from tuninetd.common import wire
from tuninetd.executor import RUN_ID_VAR, cgroup
from tuninetd.executor.output import Output
from tuninetd.executor.treekill import Processes, TreeKill, kill_now

EVENTS = ("start", "stop")


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


def spawn(request: Request, procs: str | None, home: str | None) -> subprocess.Popen[bytes]:
    """Start the command, in the cgroup whose ``cgroup.procs`` is ``procs``
    if there is one (``home``: the executor's own). It gets only fds 0, 1
    and 2 (``close_fds``): nothing the executor holds, its socket to the
    supervisor included."""
    # The daemon's own environment (inherited from the supervisor) plus the
    # event's variables: the run message carries only the latter.
    env = {**os.environ, **request.env, RUN_ID_VAR: str(request.id)}
    if procs is not None:
        try:
            cgroup.enter(procs)
        except OSError:
            raise SpawnError(f"{request.argv[0]}: could not join the cgroup {procs}") from None
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
    finally:
        if procs is not None and home is not None:
            # Back to its own leaf: staying would put the executor under the
            # run's cgroup.kill. An OSError here ends the executor.
            cgroup.enter(home)


class Run:
    """A spawned command until its process has exited and, if it had to be
    killed, until nothing of it is left."""

    def __init__(
        self, request: Request, timeout: float, now: float, groups: cgroup.RunGroups | None
    ) -> None:
        self.id = request.id
        self.event = request.event
        self.group = self._group(groups)
        self.popen = spawn(request, None if self.group is None else self.group.procs,
                           None if groups is None else groups.home)
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

    def _group(self, groups: cgroup.RunGroups | None) -> cgroup.RunGroup | None:
        """A new cgroup for this run; None (the fallback) if it cannot be made."""
        if groups is None:
            return None
        try:
            return groups.create(self.id)
        except OSError:
            return None

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

    def _processes(self) -> Processes:
        if self.group is not None:
            return self.group
        # psutil only for the fallback, and only when a run has to be killed.
        from tuninetd.executor import tree

        return tree.Marked(self.id, self.unreaped_pid)

    def kill(self, now: float, timed_out: bool) -> None:
        if self.killer is None:
            self.timed_out = timed_out
            self.killer = TreeKill(self._processes(), now)

    def kill_now(self) -> None:
        kill_now(self._processes())

    @property
    def killed_by(self) -> str:
        return "marker" if self.group is None else "cgroup"

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
            # How a kill found the run's processes: all of them, or only
            # those that kept the marker.
            "killed": None if self.killer is None else self.killed_by,
        }
