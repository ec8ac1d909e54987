"""The supervisor's one loop, after gunicorn's Arbiter: process management.

Everything happens here, in one thread: the worker records, signals (caught
into a wake-up fd, then handled from a dispatch table), timers. Small verbs:
``spawn``, ``reap``, ``murder`` (silent workers), ``manage`` (respawns and
the service's clock). What the workers say is for the links: the sensor
link judges the sensors' messages and the service (the up/down state)
acts on them; the executor link owns the command queue. Operators' views
observe the events they publish.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from typing import Any

from tuninetd.common import signals, wire, worker
from tuninetd.common.logs import log
from tuninetd.supervisor import wording
from tuninetd.supervisor.children import SILENT_BEATS, Worker
from tuninetd.supervisor.config.settings import Program, SensorSpec, Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import (
    Observers,
    Ready,
    Snapshot,
    Stopping,
    WorkerRestarted,
    WorkerView,
)
from tuninetd.supervisor.executor_link import ExecutorLink
from tuninetd.supervisor.hold import Hold
from tuninetd.supervisor.instance import Instance
from tuninetd.supervisor.late_interfaces import LateInterfaces
from tuninetd.supervisor.ops.wiring import open_observers
from tuninetd.supervisor.sandbox import allowlist
from tuninetd.supervisor.sandbox.jail import empty_dir
from tuninetd.supervisor.sensor_link import Misbehaved, SensorLink
from tuninetd.supervisor.service import Service
from tuninetd.supervisor.statefile import StateFile

STARTUP_GRACE = 15.0  # seconds for every worker to say hello before we give up
SENSOR_EXIT_GRACE = 2.0


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:  # what a sensor's seccomp filter kills with
            return f"killed by seccomp (signal {sig}, SIGSYS)"
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def exit_reason(w: Worker, status: int) -> str:
    """How ``w``'s process ended, in words: why it was killed, or its exit
    status with the last error it reported; a status 1 without one is what
    an uncaught exception gives (a sensor's stderr is /dev/null)."""
    if w.exit_reason:
        return w.exit_reason
    reason = describe_status(status)
    if w.last_error:
        return f"{reason} (its last error: {w.last_error})"
    if os.WIFEXITED(status) and os.WEXITSTATUS(status) == 1:
        return f"{reason} (a failure it did not report, such as an uncaught exception)"
    return reason


def sensor_config(spec: SensorSpec, cfg: Settings, jail: str,
                  seccomp: Program) -> dict[str, Any]:
    common = {
        "kind": spec.kind,
        "jail": jail,
        "seccomp": [list(i) for i in seccomp],
        "name": spec.name,
        "uid": cfg.sensor_user.uid,
        "gid": cfg.sensor_user.gid,
        "beat": cfg.beat,
        "want_packet": cfg.pcap_file is not None,
        "ack_only": cfg.ack_only,
        "start_packets": cfg.start_packets,
        "start_window": cfg.start_span,
    }
    if spec.waiting:  # no capture until the interface appears: see late_interfaces.py
        return {**common, "link": "", "bpf": None, "bpf_keep": None}
    if spec.kind == "pcap":
        return {
            **common,
            "link": spec.link,
            "bpf": [list(i) for i in spec.bpf],
            "bpf_keep": [list(i) for i in spec.bpf_keep] if spec.bpf_keep else None,
        }
    return {**common, "group": spec.group, "count_group": spec.count_group}


def build(cfg: Settings, me: Instance, ready_fd: int | None = None) -> Arbiter:
    """The daemon's arbiter, its workers and links, for ``cfg``."""
    jail = empty_dir()
    seccomp = allowlist.build(worker.CHANNEL_FD)
    sensors = [
        Worker(
            role=spec.label,
            module=f"tuninetd.sensors.{spec.kind}",
            config=sensor_config(spec, cfg, jail, seccomp),
            schema=wire.SENSOR_MESSAGES,
            log_name=f"sensor {spec.kind} {spec.name}",
        )
        for spec in cfg.sensors
    ]
    exec_user = cfg.exec_user
    executor = Worker(
        role="executor",
        module="tuninetd.executor.__main__",
        config={
            "timeout": cfg.command_timeout,
            "beat": cfg.beat,
            "uid": exec_user.uid if exec_user else None,
            "gid": exec_user.gid if exec_user else None,
            "user": exec_user.name if exec_user else None,
            "name": me.name,
            "first_run": 1,
        },
        schema=wire.EXECUTOR_MESSAGES,
        log_name="executor",
        inherits_environment=True,
    )
    observers = Observers()
    return Arbiter(cfg, me, observers, SensorLink(cfg, sensors),
                   ExecutorLink(cfg, executor, observers), StateFile(me.state_path, cfg),
                   ready_fd)


class Arbiter:
    def __init__(self, cfg: Settings, me: Instance, observers: Observers,
                 sensor_link: SensorLink, executor_link: ExecutorLink, state_file: StateFile,
                 ready_fd: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg = cfg
        self.clock = clock
        self.me = me
        self.ready_fd = ready_fd
        self.selector = selectors.DefaultSelector()
        self.observers = observers
        self.sensor_link = sensor_link
        self.executor_link = executor_link
        self.sensors = sensor_link.workers
        self.executor = executor_link.worker
        self.workers = [self.executor, *self.sensors]
        self.hold = Hold(cfg, observers) if cfg.hold is not None else None
        self.service = Service(cfg, sensor_link, executor_link, observers, state_file, self.hold)
        self.late = LateInterfaces(cfg.sensors)
        self.replacing: list[Worker] = []  # killed to be started anew at once
        self.handlers: dict[int, Callable[[], None]] = {
            signal.SIGCHLD: self.reap,
            signal.SIGHUP: self.handle_hup,
            signal.SIGUSR1: self.handle_usr1,
            signal.SIGTERM: self.handle_term,
            signal.SIGINT: self.handle_int,
        }
        self.starting = True
        self.stopping = False
        self.stop_deadline: float | None = None
        self.startup_deadline = 0.0
        self.proctitle = worker.Title(f"tuninetd: supervisor {me.name}", "tuninetd")

    def run(self) -> int:
        # Orphans of the executor's commands come to us, not to init: we can
        # kill what a dead executor left running, and we reap the rest.
        worker.prctl(worker.PR_SET_CHILD_SUBREAPER, 1)
        wakeup = signals.wakeup_fd(self.handlers)
        self.selector.register(wakeup, selectors.EVENT_READ, None)
        open_observers(self.cfg, self.me, self.selector, self.snapshot, self.observers,
                       {"up": self.control_up, "down": self.control_down})
        self.start()
        while not (self.stopping and not any(w.alive for w in self.workers)):
            now = self.clock()
            due = self._next_wakeup(now)
            self.turn(None if due is None else max(0.0, due - now))
        self.service.exited()
        log.info("CORE: all workers have exited, bye")
        return 0

    def start(self) -> None:
        """Resume the previous run's state; spawn every worker."""
        for spec in self.cfg.sensors:
            wording.listening(spec)
        now = self.clock()
        self.service.resume(now)
        if self.hold is not None:  # the workers cannot have it: see hold.py
            self.hold.open(self.selector, self.service.machine.up)
        self.startup_deadline = now + STARTUP_GRACE
        for w in self.workers:
            self.spawn(w, now)

    def turn(self, timeout: float | None) -> None:
        """One pass of the loop: what the workers, signals and clients say
        within ``timeout`` seconds (None: until one does), then ``manage``."""
        caught: list[int] = []
        for key, events in self.selector.select(timeout):
            if key.data is None:
                caught += signals.pending(key.fd)  # the wake-up fd
            elif isinstance(key.data, Worker):
                self._handle(key.data, self.clock())
            else:
                key.data(events)  # the control socket, metrics: see operations.py
        for sig in caught:
            self.handlers[sig]()
        self.manage(self.clock())

    def spawn(self, w: Worker, now: float) -> None:
        """Start ``w``; at run time a failure (EMFILE, ENOMEM, EAGAIN...) is
        retried with the backoff: a worker that cannot be replaced now is
        not a reason to take the daemon down."""
        try:
            w.spawn(now)
        except OSError as exc:
            if self.starting:
                raise StartupError(f"cannot start the {w.log_name}: {exc.strerror}") from None
            delay = w.retry_later(now)
            log.error("CORE: cannot start the %s: %s; trying again in %.1f s",
                      w.log_name, exc.strerror or exc, delay)
            return
        assert w.sock is not None
        self.selector.register(w.sock, selectors.EVENT_READ, w)
        self.sensor_link.handover.spawned(w)

    def snapshot(self) -> Snapshot:
        now = self.clock()
        if self.starting:
            state = "starting"
        elif self.stopping:
            state = "stopping"
        else:
            state = "up" if self.service.machine.up else "down"
        queue = self.executor_link.queue
        return Snapshot(
            state=state,
            ttl=self.cfg.ttl,
            idle=self.service.machine.idle(now),
            trigger_sensor=self.service.trigger_sensor,
            title=self.proctitle.current.removeprefix(self.proctitle.prefix).strip(),
            workers=tuple(
                WorkerView(w.role, w.log_name, w.pid, w.mode, w.restarts,
                           now - w.started if w.alive else None, w.alive, w.ready,
                           w.silent(now, self.cfg.beat), w.last_exit)
                for w in self.workers),
            running=queue.running.event if queue.running is not None else None,
            pending=tuple(job.event for job in queue.pending),
            command_pid=self.executor_link.command_pid,
            hold=self.hold.view() if self.hold is not None else None,
        )

    # -- messages --------------------------------------------------------------

    def _handle(self, w: Worker, now: float) -> None:
        for data in w.receive():
            if not data:
                self._hung_up(w)
                return
            assert w.link is not None  # each worker is made with its link
            try:
                msg = wire.parse(data, w.schema)
                w.last_heard = now
                event = w.link.receive(w, msg, now, self.starting)
                if event is not None:
                    self.service.handle(event, now, exiting=self.stopping)
            except (wire.ProtocolError, Misbehaved) as exc:
                self._misbehaved(w, str(exc))
                return
            self._check_started()
            if w.sock is None:
                return

    def _hung_up(self, w: Worker) -> None:
        # EOF mostly means the process is dying: its reap says how it ended.
        # One that lingers without its channel is killed a beat later (manage).
        self._forget_channel(w)
        if w.alive:
            w.hung_up_at = self.clock()

    def _forget_channel(self, w: Worker) -> None:
        if w.sock is not None:
            self.selector.unregister(w.sock)
            w.close()

    def _misbehaved(self, w: Worker, why: str) -> None:
        log.error("CORE: %s sent a bad message (%s): killing it",
                  w.log_name, wire.clean_text(why))
        self._forget_channel(w)
        w.kill("sent a bad message")

    def _check_started(self) -> None:
        if self.starting and all(w.ready for w in self.workers):
            self.starting = False
            self.observers.publish(Ready())
            if self.ready_fd is not None:
                wording.started(os.getpid(), daemon=True)
                try:
                    os.write(self.ready_fd, b"ok")
                except OSError as exc:  # EPIPE: it was interrupted, or killed
                    log.warning("CORE: the tuninetd -d that waited for this start is gone "
                                "(%s); running on", exc.strerror)
                os.close(self.ready_fd)
                self.ready_fd = None

    # -- signals ---------------------------------------------------------------

    def handle_hup(self) -> None:
        self.service.force_down(wording.forced_down)

    # -- the control socket's verbs ----------------------------------------------

    def control_down(self) -> tuple[bool, str]:
        wording.requested("down")
        if self.service.force_down(lambda: None):
            return True, "down: stop is being run"
        return False, "already down (standby): nothing done"

    def control_up(self) -> tuple[bool, str]:
        wording.requested("up")
        if self.starting or self.stopping:
            return False, f"{'starting' if self.starting else 'stopping'}: nothing done"
        if self.service.force_up(self.clock()):
            return True, f"up: start is being run; stop after {self.cfg.ttl} s without traffic"
        if self.hold is not None and self.hold.up(self.clock()):
            return True, "already up: the held packets are released"
        return False, "already up: nothing done"

    def handle_usr1(self) -> None:
        self.service.log_configuration(self.clock())

    def handle_term(self) -> None:
        self.shutdown("SIGTERM")

    def handle_int(self) -> None:
        self.shutdown("SIGINT")

    def shutdown(self, name: str) -> None:
        if self.stopping:
            log.info("CORE: %s caught again: killing the running command", name)
            if self.executor.alive:
                self.executor.signal(signal.SIGTERM)
            return
        log.info("CORE: %s caught, exiting", name)
        self.stopping = True
        self.observers.publish(Stopping())
        self.service.exiting()
        if self.hold is not None:
            self.hold.exiting(self.clock())
        grace = self.executor_link.close(run_stop=self.cfg.stop_on_exit)
        for s in self.sensors:
            self._forget_channel(s)  # EOF: sensors exit at once
            s.respawn_at = None
        self.stop_deadline = self.clock() + grace

    # -- processes -------------------------------------------------------------

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            for w in self.workers:
                if w.pid == pid:
                    self.exited(w, status)
                    break

    def exited(self, w: Worker, status: int) -> None:
        """``w``'s process ended with ``status`` (reaped)."""
        now = self.clock()
        pid = w.pid
        w.hung_up_at = None
        self._forget_channel(w)
        reason = w.last_exit = exit_reason(w, status)
        assert w.link is not None
        ended = w.link.lost(w)
        if ended is not None:
            self.service.handle(ended, now, exiting=self.stopping)
        if any(r is w for r in self.replacing) and not self.stopping:
            self.replacing = [r for r in self.replacing if r is not w]
            w.pid = 0
            self.spawn(w, now)
            return
        if self.stopping:
            w.pid = 0
            return
        delay = w.reaped(now)
        if self.starting:
            raise StartupError(f"the {w.log_name} (pid {pid}) {reason} while starting")
        # The metric's label: a bounded set of words, not a worker's own text.
        self.observers.publish(WorkerRestarted(w.role, w.exit_reason or describe_status(status)))
        log.warning("CORE: %s (pid %d) %s; restarting it in %.1f s",
                    w.log_name, pid, reason, delay)

    def murder(self, now: float) -> None:
        """Kill workers that went silent, or linger without their channel."""
        for w in self.workers:
            hung_up = w.hung_up_at if w.alive else None
            if w.silent(now, self.cfg.beat):
                log.warning("CORE: %s (pid %d) silent for %d beats: killing it",
                            w.log_name, w.pid, SILENT_BEATS)
                w.kill("was silent")
            elif hung_up is not None and now - hung_up >= self.cfg.beat:
                w.kill("closed its channel")

    def respawn(self, now: float) -> None:
        """Replace the workers whose backoff is over."""
        for w in self.workers:
            if not w.alive and w.respawn_at is not None and now >= w.respawn_at:
                self.spawn(w, now)

    def capture_late_interfaces(self, now: float) -> None:
        """A sensor that waited for its interface is started anew on it."""
        for spec in self.late.appeared(now, self.cfg.beat):
            w = next(s for s in self.sensors if s.role == spec.label)
            w.config = sensor_config(spec, self.cfg, w.config["jail"],
                                     w.config["seccomp"])
            if w.alive:  # else its respawn, due anyway, takes the new config
                self.replacing.append(w)
                self._forget_channel(w)
                w.kill("replaced: its interface appeared")

    def manage(self, now: float) -> None:
        if self.stopping:
            if self.stop_deadline is not None and now >= self.stop_deadline:
                for w in self.workers:
                    w.kill("did not exit at shutdown")
                self.executor_link.kill_running()
                self.stop_deadline = now + SENSOR_EXIT_GRACE
            self.proctitle.set("stopping")
            self.observers.tick(now)
            return
        if self.starting and now > self.startup_deadline:
            late = [w.log_name for w in self.workers if not w.ready]
            raise StartupError(f"no hello from the {', '.join(late)} in {STARTUP_GRACE:g} s")
        self.murder(now)
        self.respawn(now)
        self.capture_late_interfaces(now)
        self.service.manage(now)
        self.executor_link.dispatch()
        self.proctitle.set(self.service.title(now))
        self.observers.tick(now)

    def _next_wakeup(self, now: float) -> float | None:
        """The next deadline; None: only a message or a signal can change
        anything. The workers' messages wake us; no timer of our own runs
        while they keep talking."""
        wakeups: list[float] = []
        if self.starting:
            wakeups.append(self.startup_deadline)
        if not self.stopping:
            wakeups += [t for w in self.workers if (t := w.deadline(self.cfg.beat)) is not None]
        if (due := self.service.next_wakeup(now)) is not None:
            wakeups.append(due)
        if (look := self.late.deadline()) is not None:
            wakeups.append(look)
        wakeups += [w.respawn_at for w in self.workers if w.respawn_at is not None]
        if self.stop_deadline is not None:
            wakeups.append(self.stop_deadline)
        if (clients := self.observers.deadline()) is not None:
            wakeups.append(clients)
        return min(wakeups, default=None)
