"""One command run: the request, the spawned process, its timeout and its end."""

from __future__ import annotations

import contextlib
import os
import signal

from tuninetd.common import cgroup, wire
from tuninetd.common.cgroup import RUN_ID_VAR
from tuninetd.executor.output import Output
from tuninetd.executor.stepwise_kill import StepwiseKill, kill_now

# typing is for the type checker alone: the executor would carry it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from tuninetd.executor.stepwise_kill import Processes

EVENTS = ("start", "stop")


class Request:
    __slots__ = ("argv", "env", "event", "id")

    def __init__(self, run_id: int, event: str, argv: list[str], env: dict[str, str]) -> None:
        self.id = run_id
        self.event = event
        self.argv = argv
        self.env = env  # the event's variables only


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


class Inheritance:
    """What every command starts from, worked out once the executor's own
    setup is done: the daemon's environment (inherited from the supervisor;
    os.environ decodes every entry at each read) and the signals the executor
    ignores (Python's SIGPIPE and SIGXFSZ, any the daemon was started with),
    which the command gets back at their default. Only those: resetting every
    signal in the spawned child would lengthen its start.
    Those the executor handles are reset by exec itself."""

    __slots__ = ("environment", "ignored")

    def __init__(self) -> None:
        self.environment = dict(os.environ)
        self.ignored = frozenset(
            sig for sig in signal.valid_signals()
            if sig not in (signal.SIGKILL, signal.SIGSTOP)
            and signal.getsignal(sig) == signal.SIG_IGN
        )


def close_on_exec() -> None:
    """Mark every descriptor above 2 close-on-exec, once at start: what a
    careless parent left open, and the supervisor's socket, never reach a
    command. Descriptors Python opens later are close-on-exec already, so a
    spawn needs no list of descriptors to close."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            with contextlib.suppress(OSError):  # the listing's own, closed by now
                os.set_inheritable(fd, False)


def spawn(request: Request, inheritance: Inheritance) -> tuple[int, int]:
    """Start the command in a session of its own, in the executor's cgroup
    (the run's, by now); returns its pid and the read end of its output.

    posix_spawn (a vfork, in glibc) keeps the start short: subprocess adds
    a quarter of a millisecond here. The command gets fds 0, 1 and 2 only
    (see ``close_on_exec``)."""
    # The daemon's own environment plus the event's variables: the run
    # message carries only the latter.
    env = {**inheritance.environment, **request.env, RUN_ID_VAR: str(request.id)}
    out, into = os.pipe()
    try:
        pid = os.posix_spawnp(
            request.argv[0],
            request.argv,
            env,
            file_actions=[
                (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
                (os.POSIX_SPAWN_DUP2, into, 1),
                (os.POSIX_SPAWN_DUP2, into, 2),
            ],
            setsid=True,
            setsigmask=(),
            setsigdef=inheritance.ignored,
        )
    except OSError as exc:
        os.close(out)
        raise SpawnError(f"{request.argv[0]}: {exc.strerror or exc}") from None
    except ValueError as exc:  # an embedded NUL byte in argv or env
        os.close(out)
        raise SpawnError(str(exc)) from None
    finally:
        os.close(into)
    return pid, out


class Run:
    """A spawned command until its process has exited and, if it had to be
    killed, until nothing of it is left."""

    def __init__(
        self,
        request: Request,
        timeout: float,
        now: float,
        groups: cgroup.RunGroups | None,
        inheritance: Inheritance,
    ) -> None:
        self.id = request.id
        self.event = request.event
        self.group = self._join(groups)
        self.pid, out = spawn(request, inheritance)
        # Completion is the process exit, seen on a pidfd: the output pipe may
        # stay open for as long as a daemon started by the command lives.
        self.pidfd = os.pidfd_open(self.pid)
        self.output = Output(self.id, out)
        self.started = now
        self.deadline = now + timeout if timeout > 0 else None
        self.duration: float | None = None
        self.status = 0  # the wait status, once exited
        self.killer: StepwiseKill | None = None
        self.timed_out = False

    def _join(self, groups: cgroup.RunGroups | None) -> cgroup.RunGroup | None:
        """This run's cgroup, with the executor in it to spawn the command
        there; None (the fallback) if it cannot be made."""
        if groups is None:
            return None
        try:
            return groups.join(self.id)
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
        if self.exited:
            return False
        pid, status = os.waitpid(self.pid, os.WNOHANG)
        if pid == 0:
            return False
        self.status = status
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
        from tuninetd.common import marker_fallback

        return marker_fallback.Marked(self.id, self.unreaped_pid)

    def kill(self, now: float, timed_out: bool) -> None:
        if self.killer is None:
            self.timed_out = timed_out
            self.killer = StepwiseKill(self._processes(), now)

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
        rc = os.waitstatus_to_exitcode(self.status)
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
