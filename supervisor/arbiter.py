"""The supervisor's one loop, after gunicorn's Arbiter.

Everything happens here, in one thread: worker records, signals (queued by
their handlers, woken through a socket), timers. Small verbs: ``spawn``,
``reap``, ``murder`` (silent workers), ``manage`` (ttl, respawns, the
executor queue). It never parses a packet, and it trusts nothing a sensor
says: each record is checked against the schema, and a sensor that sends
anything else is killed and replaced.
"""

from __future__ import annotations

import base64
import binascii
import os
import selectors
import signal
import socket
import time
from typing import Any

from tuninetd.common import wire, worker
from tuninetd.executor.reap import RUN_ID_VAR
from tuninetd.executor.tree import kill_run
from tuninetd.supervisor import handover, pcapfile
from tuninetd.supervisor.config import Config, SensorSpec
from tuninetd.supervisor.jail import empty_dir
from tuninetd.supervisor.logs import log
from tuninetd.supervisor.ops import Ops, SetupError
from tuninetd.supervisor.privcheck import privileges_left
from tuninetd.supervisor.state import CommandQueue, Job, Machine
from tuninetd.supervisor.workers import Worker

SIGNALS = (signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)
STARTUP_GRACE = 15.0  # seconds for every worker to say hello before we give up
SENSOR_EXIT_GRACE = 2.0
NORMAL_MODES = ("armed", "counting")
REPORT_WAIT = 0.5  # seconds past the ttl a counting sensor's report is awaited


class StartupError(Exception):
    """A worker could not start; the message says why. Exit status 1."""


def describe_status(status: int) -> str:
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        if sig == signal.SIGSYS:  # what a sensor's seccomp filter kills with
            return f"killed by seccomp (signal {sig}, SIGSYS)"
        return f"killed by signal {sig} ({signal.Signals(sig).name})"
    return f"exited with status {os.waitstatus_to_exitcode(status)}"


def sensor_config(spec: SensorSpec, cfg: Config, jail: str) -> dict[str, Any]:
    common = {
        "kind": spec.kind,
        "jail": jail,
        "name": spec.name,
        "uid": cfg.sensor_user.uid,
        "gid": cfg.sensor_user.gid,
        "beat": cfg.beat,
        "want_packet": cfg.pcap_file is not None,
        "ack_only": cfg.ack_only,
    }
    if spec.kind == "pcap":
        return {
            **common,
            "link": spec.link,
            "bpf": [list(i) for i in spec.bpf],
            "bpf_ack": [list(i) for i in spec.bpf_ack] if spec.bpf_ack else None,
        }
    return {**common, "group": spec.group}


class Arbiter:
    def __init__(self, cfg: Config, ready_fd: int | None = None) -> None:
        self.cfg = cfg
        self.ready_fd = ready_fd
        self.machine = Machine(cfg.ttl)
        self.queue = CommandQueue()
        self.selector = selectors.DefaultSelector()
        self.ops = Ops(cfg, self.selector)  # status, systemd notify, metrics
        jail = empty_dir()
        self.sensors = [
            Worker(
                role=spec.label,
                module=f"tuninetd.sensors.{spec.kind}",
                config=sensor_config(spec, cfg, jail),
                schema=wire.SENSOR_MESSAGES,
                title=f"sensor {spec.kind} {spec.name}",
            )
            for spec in cfg.sensors
        ]
        exec_user = cfg.exec_user
        self.executor = Worker(
            role="executor",
            module="tuninetd.executor.__main__",
            config={
                "timeout": cfg.command_timeout,
                "beat": cfg.beat,
                "uid": exec_user.uid if exec_user else None,
                "gid": exec_user.gid if exec_user else None,
                "user": exec_user.name if exec_user else None,
            },
            schema=wire.EXECUTOR_MESSAGES,
            title="executor",
            trusted=True,
        )
        self.workers = [self.executor, *self.sensors]
        self.signals: list[int] = []
        self.starting = True
        self.stopping = False
        self.stop_deadline: float | None = None
        self.trigger_sensor = ""
        self.report_asked = 0.0  # the ttl deadline sensors were last asked to report on
        self.pcap_error = ""
        self.command_pid = 0
        self.title = worker.Title("tuninetd: supervisor", "tuninetd")

    # -- setup -----------------------------------------------------------------

    def _install_signals(self) -> None:
        rfd, wfd = socket.socketpair()
        rfd.setblocking(False)
        wfd.setblocking(False)
        self._wake = (rfd, wfd)
        signal.set_wakeup_fd(wfd.fileno(), warn_on_full_buffer=False)
        for sig in SIGNALS:
            signal.signal(sig, lambda _s, _f: None)
        self.selector.register(rfd, selectors.EVENT_READ, None)

    def run(self) -> int:
        # Orphans of the executor's commands come to us, not to init: we can
        # kill what a dead executor left running, and we reap the rest.
        worker.prctl(worker.PR_SET_CHILD_SUBREAPER, 1)
        self._install_signals()
        try:
            self.ops.open(self)
        except SetupError as exc:
            raise StartupError(str(exc)) from None
        for spec in self.cfg.sensors:
            if spec.kind == "pcap":
                log.info("Binding to interface %s", spec.name)
            else:
                log.info("Start listening nflog-group %s", spec.name)
        now = time.monotonic()
        self.startup_deadline = now + STARTUP_GRACE
        for w in self.workers:
            self.spawn(w, now)
        while True:
            now = time.monotonic()
            timeout = max(0.0, self._next_wakeup(now) - now)
            for key, events in self.selector.select(timeout):
                if key.data is None:
                    self._drain_signals()
                elif isinstance(key.data, Worker):
                    self._handle(key.data, time.monotonic())
                else:
                    key.data(events)  # the control socket, metrics: see ops.py
            self._handle_signals()
            self.manage(time.monotonic())
            if self.stopping and not any(w.alive for w in self.workers):
                log.info("CORE: all workers have exited, bye")
                return 0

    def spawn(self, w: Worker, now: float) -> None:
        try:
            w.spawn(now)
        except OSError as exc:
            raise StartupError(f"cannot start the {w.title}: {exc.strerror}") from None
        assert w.sock is not None
        self.selector.register(w.sock, selectors.EVENT_READ, w)

    # -- events ----------------------------------------------------------------

    def _drain_signals(self) -> None:
        rfd = self._wake[0]
        try:
            while data := rfd.recv(256):
                self.signals.extend(data)
        except BlockingIOError:
            pass

    def _handle_signals(self) -> None:
        while self.signals:
            sig = self.signals.pop(0)
            if sig == signal.SIGCHLD:
                self.reap()
            elif sig == signal.SIGHUP:
                self.on_sighup()
            elif sig == signal.SIGUSR1:
                self.on_sigusr1()
            elif sig in (signal.SIGTERM, signal.SIGINT):
                self.shutdown(signal.Signals(sig).name)

    def _handle(self, w: Worker, now: float) -> None:
        for data in w.receive():
            if not data:
                self._hung_up(w)
                return
            try:
                msg = wire.parse(data, w.schema)
            except wire.ProtocolError as exc:
                self._misbehaved(w, str(exc))
                return
            w.last_heard = now
            if w is self.executor:
                self.on_executor(msg, now)
            else:
                self.on_sensor(w, msg, now)
            if w.sock is None:
                return

    def _hung_up(self, w: Worker) -> None:
        # EOF mostly means the process is dying: its reap says how it ended.
        # One that lingers without its channel is killed a beat later (manage).
        self._forget_channel(w)
        if w.alive:
            w.hung_up_at = time.monotonic()

    def _forget_channel(self, w: Worker) -> None:
        if w.sock is not None:
            self.selector.unregister(w.sock)
            w.close()

    def _misbehaved(self, w: Worker, why: str) -> None:
        log.error("CORE: %s sent a bad message (%s): killing it", w.title, wire.clean_text(why))
        self._forget_channel(w)
        w.kill("sent a bad message")

    # -- sensors ---------------------------------------------------------------

    def on_sensor(self, w: Worker, msg: wire.Message, now: float) -> None:
        kind = msg["t"]
        if kind == "hello":
            self._sensor_hello(w)
        elif not w.ready and kind != "error":
            self._misbehaved(w, f"{kind} before hello")
        elif kind == "beat":
            self._sensor_mode(w, wire.clean_text(msg.get("mode", ""), 40))
            handover.offer(w)
            self.machine.activity(now, msg["n"])
            self.ops.beat(w.role, msg["n"], now)
        elif kind == "trigger":
            self._sensor_trigger(w, msg, now)
        elif kind == "error":
            reason = wire.clean_text(msg["reason"])
            if self.starting and not w.ready:
                raise StartupError(reason)
            log.error("CORE: %s: %s", w.title, reason)

    def _order(self, w: Worker, verb: str) -> None:
        """Send ``arm`` or ``count``; the title follows unless the sensor is
        in trouble, which only its own beat can end."""
        w.send(verb)
        if w.mode in NORMAL_MODES:
            w.mode = "armed" if verb == "arm" else "counting"

    def _sensor_mode(self, w: Worker, mode: str) -> None:
        """Log the way into and out of trouble (e.g. the interface is gone),
        once each, not every beat."""
        if mode not in NORMAL_MODES and mode != w.mode:
            log.warning("CORE: %s: %s", w.title, mode)
        elif mode in NORMAL_MODES and w.mode not in NORMAL_MODES:
            log.info("CORE: %s: capturing again", w.title)
        w.mode = mode

    def _sensor_hello(self, w: Worker) -> None:
        if w.ready:
            self._misbehaved(w, "hello twice")
            return
        wrong = privileges_left(w.pid, self.cfg.sensor_user.uid, self.cfg.sensor_user.gid)
        if wrong:
            log.error("CORE: %s is still privileged (%s): killing it", w.title, "; ".join(wrong))
            w.kill("still privileged after hello")
            if self.starting:
                raise StartupError(f"the {w.title} did not drop its privileges")
            return
        w.ready = True
        w.mode = "armed"
        if w.restarts:
            log.info("CORE: %s is back (pid %d)", w.title, w.pid)
        if self.machine.up:
            self._order(w, "count")
        self._check_started()

    def _sensor_trigger(self, w: Worker, msg: wire.Message, now: float) -> None:
        link = msg["link"]
        try:
            packet = base64.b64decode(msg["pkt"], validate=True) if "pkt" in msg else None
        except (binascii.Error, ValueError):
            self._misbehaved(w, "trigger with a bad packet")
            return
        if link not in ("ether", "raw") or (packet is not None and len(packet) > wire.SNAPLEN):
            self._misbehaved(w, "trigger with a bad link type or packet")
            return
        w.mode = "counting"
        if not self.machine.trigger(now):
            self.ops.trigger(w.role, [], now, fired=False)
            return  # another sensor fired first: this is only activity
        spec_kind, _, _name = w.role.partition(":")
        self.trigger_sensor = w.role
        lines = [wire.clean_text(x) for x in msg["lines"]]
        if "prefix" in msg:
            lines.append(f'|- NFLOG prefix: "{wire.clean_text(msg["prefix"], 64)}"')
        self.ops.trigger(w.role, lines, now, fired=True)
        env = self._event_env("start")
        for field in ("src", "dst", "proto"):
            if field in msg:
                env[f"TUNINETD_{field.upper()}"] = wire.clean_text(msg[field], 64)
        cancelled = self.queue.push("start", env=env, sensor=spec_kind, lines=lines)
        if cancelled is not None:
            log.info("%s: new activity while stop was still queued: stop cancelled, "
                     "service stays up", spec_kind.upper())
            for line in lines:
                log.info("%s", line)
        self._dispatch()  # first: the start latency is what users wait on
        for other in self.sensors:
            if other is not w and other.ready:
                self._order(other, "count")
        if packet is not None and self.cfg.pcap_file:
            self._dump_packet(packet, link)

    def _dump_packet(self, packet: bytes, link: str) -> None:
        assert self.cfg.pcap_file is not None
        try:
            pcapfile.append(self.cfg.pcap_file, time.time(), packet, link)
        except OSError as exc:
            # Once per kind of failure (its errno: a full disk gives short
            # writes of varying sizes and ENOSPC, all one failure), not per packet.
            why = exc.strerror or str(exc)
            kind = f"errno {exc.errno}" if exc.errno else why
            if kind != self.pcap_error:
                log.error("Logger: can't write packet to pcap file %s: %s", self.cfg.pcap_file, why)
            self.pcap_error = kind
        else:
            if self.pcap_error:
                log.info("Logger: writing packets to pcap file %s again", self.cfg.pcap_file)
            self.pcap_error = ""

    def _event_env(self, event: str) -> dict[str, str]:
        return {
            "TUNINETD_EVENT": event,
            "TUNINETD_SENSOR": self.trigger_sensor,
            "TUNINETD_TTL": str(self.cfg.ttl),
        }

    # -- executor --------------------------------------------------------------

    def on_executor(self, msg: wire.Message, now: float) -> None:
        kind = msg["t"]
        job = self.queue.running
        if kind == "hello":
            self.executor.ready = True
            self.executor.mode = "idle"
            if self.executor.restarts:
                log.info("CORE: executor is back (pid %d)", self.executor.pid)
            self._check_started()
        elif kind == "beat":
            self.executor.mode = wire.clean_text(msg.get("mode", ""), 40)
        elif kind == "started" and job is not None and msg["id"] == job.id:
            self.command_pid = msg["pid"]
        elif kind == "out":
            event = job.event if job is not None and msg["id"] == job.id else "command"
            log.info("%s: %s", event, wire.clean_text(msg["line"]))
        elif kind == "done":
            finished = self.queue.finish(msg["id"])
            if finished is not None:
                self.command_pid = 0
                self._report(finished, msg)
                self.ops.command_done(finished.event, msg)
        elif kind == "error":
            log.error("CORE: executor: %s", wire.clean_text(msg["reason"]))
            if self.starting and not self.executor.ready:
                raise StartupError(wire.clean_text(msg["reason"]))

    def _report(self, job: Job, msg: wire.Message) -> None:
        argv = " ".join(self.cfg.argv(job.event))
        if msg.get("error"):
            log.warning("Warning! Executable command could not be run (%s): %s",
                        argv, wire.clean_text(msg["error"]))
        elif msg["timeout"] and msg.get("killed") == "cgroup":
            log.warning("Warning! Executable command timed out after %g s and was killed "
                        "with its process tree, through its cgroup (%s)",
                        self.cfg.command_timeout, argv)
        elif msg["timeout"]:
            log.warning("Warning! Executable command timed out after %g s and was killed "
                        "with the processes that kept its %s; any that dropped it may "
                        "survive (%s)", self.cfg.command_timeout, RUN_ID_VAR, argv)
        elif msg["sig"] is not None:
            log.warning("Warning! Executable command was killed by signal %d (%s)",
                        msg["sig"], argv)
        elif msg["rc"] != 0:
            log.warning("Warning! Executable command doesn't return 0 code (%s), exit code %d",
                        argv, msg["rc"])
        if job.event == "start":
            log.info("%s: start command done", job.sensor.upper())
            for line in job.lines:
                log.info("%s", line)

    def _dispatch(self) -> None:
        if not self.executor.ready or self.stopping:
            return
        job = self.queue.take()
        if job is None:
            return
        if job.event == "stop":
            log.info("CORE: executing STOP command...")
        sent = self.executor.send(
            "run",
            id=job.id,
            event=job.event,
            argv=self.cfg.argv(job.event),
            env=job.env,
        )
        if not sent:
            self.executor.kill("could not take a command")

    # -- signals ---------------------------------------------------------------

    def on_sighup(self) -> None:
        if not self.machine.force_down():
            log.warning("Warning! Tuninetd is already in standby mode")
            return
        log.info("SIGHUP caught, switch to standby mode")
        self._go_down()

    def on_sigusr1(self) -> None:
        log.info("SIGUSR1 caught:")
        for spec in self.cfg.sensors:
            if spec.kind == "pcap":
                log.info("- capture engine: pcap, %s", spec.name)
                if self.cfg.pcap_filter is not None:
                    log.info('-- pcap filter: "%s"', self.cfg.pcap_filter)
            else:
                log.info("- capture engine: nflog group %s", spec.name)
        if self.cfg.ack_only:
            log.info("- using packets with tcp[ack] flag to reset TTL timer")
        if self.cfg.pcap_file:
            log.info("- file to dump start event packets (pcap format): %s", self.cfg.pcap_file)
        if self.cfg.command:
            log.info("- event path: %s", self.cfg.command)
        for event, argv in (("start", self.cfg.start_command), ("stop", self.cfg.stop_command)):
            if argv:
                log.info("- %s command: %s", event, " ".join(argv))
        log.info("- TTL: %d sec.", self.cfg.ttl)
        if self.machine.up:
            log.info("- current status: up (ON), time since last captured packet: %d sec.",
                     int(self.machine.idle(time.monotonic())))
        else:
            log.info("- current status: standby (OFF)")

    def shutdown(self, name: str) -> None:
        if self.stopping:
            log.info("CORE: %s caught again: killing the running command", name)
            if self.executor.alive:
                os.kill(self.executor.pid, signal.SIGTERM)
            return
        log.info("CORE: %s caught, exiting", name)
        self.stopping = True
        self.ops.stopping()
        for job in self.queue.drop_pending():
            log.info("CORE: dropping the queued %s command", job.event)
        for s in self.sensors:
            self._forget_channel(s)  # EOF: sensors exit at once
            s.respawn_at = None
        self.executor.send("quit")
        running = self.queue.running is not None
        grace = self.cfg.command_timeout + 5 if running and self.cfg.command_timeout else 5
        self.stop_deadline = time.monotonic() + grace

    # -- the rest of the loop --------------------------------------------------

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
                    self._worker_exited(w, status)
                    break

    def _worker_exited(self, w: Worker, status: int) -> None:
        now = time.monotonic()
        pid = w.pid
        w.hung_up_at = None
        self._forget_channel(w)
        reason = w.exit_reason or describe_status(status)
        if w is self.executor:
            self.executor.ready = False
            self._executor_lost()
        if self.stopping:
            w.pid = 0
            return
        delay = w.reaped(now)
        if self.starting:
            raise StartupError(f"the {w.title} (pid {pid}) {reason} while starting")
        self.ops.worker_restarted(w.role, reason)
        log.warning("CORE: %s (pid %d) %s; restarting it in %.1f s", w.title, pid, reason, delay)

    def _executor_lost(self) -> None:
        job = self.queue.running
        if job is None:
            return
        self.queue.finish(job.id)
        self.ops.command_lost(job.event)
        killed = kill_run(job.id)
        log.error("CORE: executor died while running the %s command; %s; the command "
                  "counts as failed", job.event, killed.describe())
        self.command_pid = 0

    def manage(self, now: float) -> None:
        if self.stopping:
            if self.stop_deadline is not None and now >= self.stop_deadline:
                for w in self.workers:
                    w.kill("did not exit at shutdown")
                if self.queue.running is not None:
                    kill_run(self.queue.running.id)
                self.stop_deadline = now + SENSOR_EXIT_GRACE
            self.title.set("stopping")
            self.ops.tick(now)
            return
        if self.starting and now > self.startup_deadline:
            late = [w.title for w in self.workers if not w.ready]
            raise StartupError(f"no hello from the {', '.join(late)} in {STARTUP_GRACE:g} s")
        for w in self.workers:
            hung_up = w.hung_up_at if w.alive else None
            if w.silent(now, self.cfg.beat):
                log.warning("CORE: %s (pid %d) silent for %d beats: killing it",
                            w.title, w.pid, 5)
                w.kill("was silent")
            elif hung_up is not None and now - hung_up >= self.cfg.beat:
                w.kill("closed its channel")
            elif not w.alive and w.respawn_at is not None and now >= w.respawn_at:
                self.spawn(w, now)
        if self._stop_is_due(now) and self.machine.expire(now):
            self._go_down()
        self._dispatch()
        if self.machine.up:
            self.title.set(f"up idle {int(self.machine.idle(now))}s")
        else:
            self.title.set("down")
        self.ops.tick(now)

    def _go_down(self) -> None:
        if self.queue.push("stop", env=self._event_env("stop")) is not None:
            log.info("CORE: idle again before the start command could run: start cancelled")
        for s in self.sensors:
            if s.ready:
                self._order(s, "arm")
        self._dispatch()

    def _stop_is_due(self, now: float) -> bool:
        """The ttl has run out, and every counting sensor has reported on the
        time up to then: a packet counted but not yet reported when the ttl
        ran out would make the stop early (and the re-arm start it again).
        Sensors are asked to report at once, so this costs milliseconds, not
        a beat; one that does not answer within REPORT_WAIT is not waited for
        (the silence check deals with it)."""
        deadline = self.machine.deadline()
        if deadline is None or now < deadline:
            return False
        behind = [s for s in self.sensors
                  if s.ready and s.mode == "counting" and s.last_heard < deadline]
        if not behind or now >= deadline + REPORT_WAIT:
            return True
        if self.report_asked != deadline:
            self.report_asked = deadline
            for s in behind:
                s.send("report")
        return False

    def _next_wakeup(self, now: float) -> float:
        wakeups = [now + self.cfg.beat]
        deadline = self.machine.deadline()
        if deadline is not None:
            # Past it, the sensors' reports wake us; this is the backstop.
            wakeups.append(deadline if deadline > now else deadline + REPORT_WAIT)
        wakeups += [w.respawn_at for w in self.workers if w.respawn_at is not None]
        if self.stop_deadline is not None:
            wakeups.append(self.stop_deadline)
        if (clients := self.ops.deadline()) is not None:
            wakeups.append(clients)
        return min(wakeups)

    def _check_started(self) -> None:
        if self.starting and all(w.ready for w in self.workers):
            self.starting = False
            self.ops.ready()
            if self.ready_fd is not None:  # -d: only now, so a failed start never says it
                log.info("Success! Tuninetd has been started with PID: %d", os.getpid())
                os.write(self.ready_fd, b"ok")
                os.close(self.ready_fd)
                self.ready_fd = None
