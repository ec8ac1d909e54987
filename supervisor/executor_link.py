"""The supervisor's side of the executor: the command queue, handing the
next command over, and what comes back (output, the outcome)."""

from __future__ import annotations

import os
import socket

from tuninetd.common import cgroup, wire
from tuninetd.common.logs import log
from tuninetd.supervisor import wording
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import CommandEnded, Observers, Outcome
from tuninetd.supervisor.state import CommandQueue


class ExecutorLink:
    def __init__(self, cfg: Settings, worker: Worker, observers: Observers) -> None:
        self.cfg = cfg
        self.worker = worker
        worker.link = self
        self.observers = observers
        self.queue = CommandQueue()
        self.command_pid = 0  # the running command's, once the executor says
        self.closed = False  # shutting down: only the stop kept by close() is handed over
        self.quit_sent = False
        # What replaced executors say again (no cgroup here) is said once.
        self.said: set[str] = set()

    def start(self, env: dict[str, str], sensor_kind: str, lines: tuple[str, ...]) -> bool:
        """Queue start; False: it cancelled a stop still waiting, and the
        service simply stays up (no start runs)."""
        if self.queue.push("start", env=env, sensor=sensor_kind, lines=list(lines)) is not None:
            wording.stop_cancelled(sensor_kind, lines)
            return False
        return True

    def stop(self, env: dict[str, str]) -> None:
        if self.queue.push("stop", env=env) is not None:
            wording.start_cancelled()

    def dispatch(self) -> None:
        if self.quit_sent:
            return
        if self.closed and self.queue.running is None and not self.queue.pending:
            self.quit_sent = True
            self.worker.send("quit")
            return
        if not self.worker.ready:
            return
        job = self.queue.take()
        if job is None:
            return
        # A replacement executor waits in the cgroup of the next run.
        self.worker.config["first_run"] = self.queue.next_id
        if job.event == "stop":
            wording.executing_stop()
        sent = self.worker.send("run", id=job.id, event=job.event,
                                argv=self.cfg.argv(job.event), env=job.env)
        if not sent:
            self.worker.kill("could not take a command")
        elif self.cfg.exec_user is not None:
            self.hand_cgroup(job.id + 1)

    def hand_cgroup(self, run_id: int) -> None:
        """An --exec-user executor owns no cgroup (a command of the same user
        could otherwise move out of its run's): the next run's is made here,
        once this run is on its way, and handed over as two descriptors
        opened as root (cgroup.RunGroups.adopt). Without a cgroup tree (the
        executor runs on the fallback) there is nothing to hand."""
        try:
            fds = cgroup.prepare(os.getpid(), run_id)
        except (OSError, cgroup.Unavailable):
            return
        try:
            assert self.worker.sock is not None
            socket.send_fds(self.worker.sock, [wire.encode("cgroup", id=run_id)], list(fds))
        except OSError:
            pass  # gone: its replacement makes its first run's cgroup itself
        finally:
            for fd in fds:
                os.close(fd)

    def receive(self, w: Worker, msg: wire.Message, now: float,
                starting: bool) -> CommandEnded | None:
        """A command's end is returned too: the service acts on a failed start."""
        kind = msg["t"]
        job = self.queue.running
        if kind == "hello":
            w.ready = True
            w.mode = wire.Mode.IDLE
            if w.restarts:
                log.info("CORE: executor is back (pid %d)", w.pid)
        elif kind == "beat":
            w.mode = wire.mode_of(msg, wire.EXECUTOR_MODES)
        elif kind == "started" and job is not None and msg["id"] == job.id:
            self.command_pid = msg["pid"]
            w.mode = wire.Mode.RUNNING  # before its next heartbeat says so
        elif kind == "out":
            event = job.event if job is not None and msg["id"] == job.id else "command"
            wording.command_output(event, wire.clean_text(msg["line"]))
        elif kind == "done":
            finished = self.queue.finish(msg["id"])
            if finished is not None:
                self.command_pid = 0
                w.mode = wire.Mode.IDLE
                outcome = Outcome(
                    error=wire.clean_text(msg["error"]) if msg.get("error") else None,
                    timeout=bool(msg["timeout"]), signal=msg["sig"], exit_code=msg["rc"],
                    duration=float(msg.get("dur") or 0.0), cgroup=msg.get("killed") == "cgroup")
                wording.command_warning(outcome, self.cfg.argv(finished.event),
                                        self.cfg.command_timeout)
                if finished.event == "start" and not outcome.error:  # it never ran
                    wording.start_done(finished.sensor, finished.lines)
                ended = CommandEnded(finished.event, outcome)
                self.observers.publish(ended)
                if self.closed:
                    self.dispatch()
                return ended
        elif kind == "error":
            reason = wire.clean_text(msg["reason"])
            if msg.get("fatal"):  # why it is about to exit; the rest are complaints
                self.worker.last_error = reason
            if reason not in self.said:
                self.said.add(reason)
                log.error("CORE: executor: %s", reason)
            if starting and not w.ready:
                raise StartupError(reason)
        return None

    def lost(self, w: Worker) -> CommandEnded | None:
        """The executor died: the command it ran counts as failed, and
        whatever is left of it (adopted by us, the subreaper) is killed."""
        w.ready = False
        job = self.queue.running
        if job is None:
            return None
        # psutil comes with it: loaded only the day an executor dies mid-run.
        from tuninetd.common import marker_fallback

        self.queue.finish(job.id)
        ended = CommandEnded(job.event, Outcome(lost=True))
        self.observers.publish(ended)
        wording.executor_lost(job.event, marker_fallback.kill_run(job.id).describe())
        self.command_pid = 0
        return ended

    def close(self, run_stop: bool) -> float:
        """Shutting down: drop what waits (but a stop, with ``run_stop``), and
        ask the executor to quit once nothing is left to run. Returns how long
        to wait for it (the commands' timeouts, and some)."""
        self.closed = True
        for job in self.queue.drop_pending():
            if run_stop and job.event == "stop":
                self.queue.pending.append(job)
            else:
                log.info("CORE: dropping the queued %s command", job.event)
        self.dispatch()
        commands = (self.queue.running is not None) + len(self.queue.pending)
        return self.cfg.command_timeout * commands + 5 if self.cfg.command_timeout else 5

    def kill_running(self) -> None:
        if self.queue.running is not None:
            from tuninetd.common import marker_fallback

            marker_fallback.kill_run(self.queue.running.id)
