"""The executor's event loop: one selector over the supervisor socket, the
signal wake-up pipe, the running command's pidfd and every output pipe, plus
timers for the heartbeat, the timeout, the tree kill and the rate limiter.

Nothing in here blocks: a hung or chatty command never delays a beat.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from functools import partial

from tuninetd.common import wire
from tuninetd.common.cgroup import RunGroups
from tuninetd.common.worker import HEARTBEAT_BEATS, Title, next_tick
from tuninetd.executor.config import Config
from tuninetd.executor.output import Output
from tuninetd.executor.reap import reap_orphans
from tuninetd.executor.runner import Inheritance, Run, SpawnError, parse_request

# typing is for the type checker alone: the executor would carry it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

# Pipes still held open by daemons of commands that have exited. Beyond this
# the oldest is closed, though a daemon writing to it then gets SIGPIPE.
MAX_LINGERING = 16

Handler = Callable[[], None]


class Executor:
    def __init__(
        self,
        sock: socket.socket,
        config: Config,
        title: Title,
        wakeup: int,
        groups: RunGroups | None,
    ) -> None:
        self.sock = sock
        self.config = config
        self.groups = groups
        self.title = title
        self.wakeup = wakeup
        self.selector = selectors.DefaultSelector()
        self.selector.register(sock, selectors.EVENT_READ, self._on_socket)
        self.selector.register(wakeup, selectors.EVENT_READ, self._on_signal)
        self.run: Run | None = None
        self.inheritance = Inheritance()
        self.lingering: deque[Output] = deque()
        # Nothing the supervisor waits on comes with a beat: the executor only
        # shows it is alive, every heartbeat.
        self.heartbeat = config.beat * HEARTBEAT_BEATS
        self.next_beat = next_tick(time.monotonic(), self.heartbeat)
        self.quitting = False
        self.gone = False

    def serve(self) -> None:
        """Until asked to quit, or the supervisor is gone, and no command runs."""
        try:
            while not ((self.quitting or self.gone) and self.run is None):
                for key, _ in self.selector.select(self._wait_time()):
                    # An earlier handler of the same batch may have dropped
                    # this fd (a pipe drained to EOF at exit, the socket).
                    if self.selector.get_map().get(key.fd) is key:
                        handler: Handler = key.data
                        handler()
                self._on_timers()
                reap_orphans(self.run.unreaped_pid if self.run else None)
        except BaseException:
            if self.run is not None:
                self.run.kill_now()
            raise

    # -- sending ---------------------------------------------------------

    def _send(self, kind: str, **fields: Any) -> None:
        if self.gone:
            return
        try:
            wire.send(self.sock, kind, **fields)
        except OSError:
            self._supervisor_gone()

    def _complain(self, reason: str) -> None:
        self._send("error", reason=wire.clean_text(reason), fatal=False)

    def _supervisor_gone(self) -> None:
        """EOF, a failed send or SIGTERM: kill the running command and leave."""
        if self.gone:
            return
        self.gone = True
        self.selector.unregister(self.sock)
        if self.run is not None:
            self.run.kill(time.monotonic(), timed_out=False)

    # -- events ----------------------------------------------------------

    def _on_socket(self) -> None:
        try:
            data, fds = wire.recv_with_fds(self.sock, 2)
        except OSError:
            data, fds = b"", []
        if not data:
            self._supervisor_gone()
            return
        try:
            msg = wire.decode(data)
        except wire.ProtocolError as exc:
            msg = {"t": "", "bad": str(exc)}
        if msg["t"] == "cgroup" and len(fds) == 2:
            self._on_cgroup(msg, fds[0], fds[1])
            return
        for fd in fds:
            os.close(fd)
        if msg["t"] == "run":
            self._on_run(msg)
        elif "bad" in msg:
            self._complain(f"bad message: {msg['bad']}")
        elif msg["t"] == "quit":
            self.quitting = True
        else:
            self._complain(f"unexpected message {msg['t']}")

    def _on_cgroup(self, msg: wire.Message, procs: int, kill: int) -> None:
        """The next run's cgroup, made by the supervisor for an --exec-user
        executor, which cannot make it: moved into, off the start path."""
        run_id = msg.get("id")
        if self.groups is None or self.groups.privileged or not isinstance(run_id, int):
            os.close(procs)
            os.close(kill)
            return
        try:
            self.groups.adopt(run_id, procs, kill)
        except OSError as exc:
            self._complain(f"cannot move into the cgroup of run {run_id} "
                           f"({exc.strerror or exc}): it runs on the marker fallback")

    def _on_signal(self) -> None:
        try:
            signums = os.read(self.wakeup, 64)
        except BlockingIOError:
            return
        # SIGCHLD only needs to wake us up: orphans are reaped every turn.
        if signal.SIGTERM in signums:
            self._supervisor_gone()

    def _on_run(self, msg: wire.Message) -> None:
        if self.run is not None or self.quitting:
            why = "quitting" if self.quitting else "another command is running"
            self._complain(f"run {msg.get('id')} refused: {why}")
            return
        try:
            request = parse_request(msg)
        except ValueError as exc:
            self._complain(str(exc))
            return
        now = time.monotonic()
        try:
            run = Run(request, self.config.timeout, now, self.groups, self.inheritance)
        except SpawnError as exc:
            self._send(
                "done",
                id=request.id,
                rc=None,
                sig=None,
                dur=round(time.monotonic() - now, 3),
                timeout=False,
                error=wire.clean_text(str(exc)),
            )
        else:
            # The command first: woken at its exec, we would take the CPU from
            # it for the bookkeeping below.
            os.sched_yield()
            self.run = run
            self.selector.register(run.pidfd, selectors.EVENT_READ, self._on_exit)
            self._watch(run.output)
            self._send("started", id=run.id, pid=run.pid)
            self.title.set(f"running {run.event} pid {run.pid}")
        if self.groups is not None:
            # The slow part of a cgroup, the migration, once the command runs.
            self.groups.move_on(request.id)

    def _on_exit(self) -> None:
        run = self.run
        assert run is not None
        if not run.reap(time.monotonic()):
            return
        self.selector.unregister(run.pidfd)
        os.close(run.pidfd)
        # What the command wrote before it died goes out before its done.
        if not run.output.eof:
            self._forward(run.output, run.output.drain(time.monotonic()))
        self._finish_if_over()

    def _on_output(self, output: Output) -> None:
        self._forward(output, output.read(time.monotonic()))

    def _on_timers(self) -> None:
        now = time.monotonic()
        if now >= self.next_beat and not self.gone:
            mode = wire.Mode.IDLE if self.run is None else wire.Mode.RUNNING
            self._send("beat", n=0, mode=mode.value)
            self.next_beat = next_tick(now, self.heartbeat)
        for output in self._open_outputs():
            self._forward(output, output.tick(now))
        run = self.run
        if run is None:
            return
        if run.timeout_due(now):
            run.kill(now, timed_out=True)
        if run.killer is not None:
            run.killer.step(now)
        self._finish_if_over()

    # -- helpers ---------------------------------------------------------

    def _finish_if_over(self) -> None:
        run = self.run
        if run is None or not run.over:
            return
        self._send("done", **run.done_fields())
        if run.killer is not None and run.killer.survivors:
            self._complain(f"run {run.id}: could not kill pids {run.killer.survivors}")
        if not run.output.eof:
            self._linger(run.output)
        self.run = None
        self.title.set("idle")

    def _watch(self, output: Output) -> None:
        self.selector.register(output.fd, selectors.EVENT_READ, partial(self._on_output, output))

    def _forward(self, output: Output, lines: list[str]) -> None:
        for line in lines:
            self._send("out", id=output.run_id, line=line)
        if output.eof:
            self.selector.unregister(output.fd)
            output.close()
            if output in self.lingering:
                self.lingering.remove(output)

    def _linger(self, output: Output) -> None:
        self.lingering.append(output)
        if len(self.lingering) > MAX_LINGERING:
            oldest = self.lingering.popleft()
            self.selector.unregister(oldest.fd)
            oldest.close()

    def _open_outputs(self) -> list[Output]:
        outputs = list(self.lingering)
        if self.run is not None and not self.run.output.eof:
            outputs.append(self.run.output)
        return outputs

    def _wait_time(self) -> float | None:
        times = [output.deadline() for output in self._open_outputs()]
        if not self.gone:
            times.append(self.next_beat)
        if self.run is not None:
            times.append(self.run.next_deadline())
        deadline = min((t for t in times if t is not None), default=None)
        if deadline is None:
            return None  # nothing is due: only an event can change anything
        return max(0.0, deadline - time.monotonic())
