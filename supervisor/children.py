"""Worker processes as the supervisor sees them: spawn, talk, judge, replace.

A worker is a fresh interpreter (``python -m tuninetd.<role>``) holding one end
of a SOCK_SEQPACKET socketpair, not a fork of the supervisor: nothing of the
supervisor's memory goes with it. It runs in its own session so a Ctrl-C on
the terminal reaches the supervisor alone.

Nor does anything of whoever started the daemon go with it: a descriptor
inherited from the starting shell (``exec 7</``) would let a chrooted sensor
``fchdir`` out of its jail. A worker starts with its socket (always on
descriptor CHANNEL_FD) and 0/1/2 only; a sensor's 0/1/2 are /dev/null and
its environment is SENSOR_ENV alone.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from tuninetd.common import wire
from tuninetd.common.worker import CHANNEL_FD
from tuninetd.supervisor.sandbox import privcheck

if TYPE_CHECKING:
    from tuninetd.supervisor.events import CommandEnded
    from tuninetd.supervisor.sensor_link import SensorEvent

# Workers with nothing to say beat every HEARTBEAT_BEATS beats; one not heard
# from for SILENT_BEATS is frozen. A heartbeat may come SILENT_BEATS -
# HEARTBEAT_BEATS beats late (a loaded machine) before that.
SILENT_BEATS = 10
HELLO_GRACE = 10.0


# Workers start without site (-S): site-packages' .pth hooks would load in
# every process (bench's memory section counts it), and a root process should
# not import from the current directory either (-P). The bootstrap gives the worker the
# supervisor's own import path and says where the ``tuninetd`` package's
# role folders are (its ``__path__``), then runs the module's main().
BOOT = (
    "import sys,types;t=types.ModuleType('tuninetd');"
    "t.__path__=sys.argv.pop(1).split(':');sys.modules['tuninetd']=t;"
    "sys.path+=[p for p in sys.argv.pop(1).split(':') if p not in sys.path];"
    "__import__(sys.argv.pop(1),fromlist=['main']).main()"
)
# Not empty: setproctitle finds the memory it rewrites through the
# environment block. A locale is all a sensor needs.
SENSOR_ENV = {"LC_ALL": "C.UTF-8"}


@functools.cache
def import_path() -> tuple[str, str]:
    """The folders that hold tuninetd's role packages, and the supervisor's
    import path, for a worker's bootstrap. Worked out once: every spawn and
    respawn uses the same.

    Installed, the roles sit in one ``tuninetd`` folder; in an editable
    install they are the repository's top-level folders (the package-dir
    mapping), which site-packages' editable finder serves only to processes
    that ran site. Naming the folders as the package's ``__path__`` serves
    both, with no file written anywhere. The supervisor's script folder or
    current directory (``sys.path[0]``) is left out.
    """
    from tuninetd import common, executor, sensors

    roles = {os.path.dirname(os.path.dirname(str(m.__file__)))
             for m in (common, executor, sensors)}
    path = sys.path if sys.flags.safe_path else sys.path[1:]
    return (os.pathsep.join(sorted(roles)),
            os.pathsep.join(p for p in path if os.path.isabs(p)))


@dataclass(frozen=True, slots=True)
class Backoff:
    """How soon a worker that exited is replaced: ``first`` seconds, doubling
    up to ``longest``; back to ``first`` once one ran ``healthy_after`` seconds."""

    first: float = 0.5
    longest: float = 30.0
    healthy_after: float = 60.0


def spawn_fds(channel: int, keep_output: bool) -> list[tuple[Any, ...]]:
    """posix_spawn file actions: ``channel`` moved to CHANNEL_FD, 0 (and 1, 2
    unless ``keep_output``) from /dev/null, and every other inheritable
    descriptor closed.

    Ours are close-on-exec (PEP 446); what is inheritable came from outside.
    The loop is single-threaded, so the list is still right at the spawn.
    """
    actions: list[tuple[Any, ...]] = []
    if channel != CHANNEL_FD:
        actions.append((os.POSIX_SPAWN_DUP2, channel, CHANNEL_FD))
    actions.append((os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0))
    if not keep_output:
        actions += [(os.POSIX_SPAWN_OPEN, fd, os.devnull, os.O_WRONLY, 0) for fd in (1, 2)]
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2 and fd != CHANNEL_FD and (fd == channel or _inheritable(fd)):
            actions.append((os.POSIX_SPAWN_CLOSE, fd))
    return actions


def _inheritable(fd: int) -> bool:
    try:
        return os.get_inheritable(fd)
    except OSError:  # the directory listing's own descriptor, closed by now
        return False


class Link(Protocol):
    """The supervisor's side of one kind of worker: it judges what the
    worker says and turns it into events for the service."""

    def receive(self, w: Worker, msg: wire.Message, now: float,
                starting: bool) -> SensorEvent | CommandEnded | None:
        """A message, already checked against the worker's schema. Raises
        ProtocolError (or StartupError while starting) for one it refuses."""
        ...

    def lost(self, w: Worker) -> CommandEnded | None:
        """The worker's process is gone: what that ends."""
        ...


@dataclass(slots=True)
class Worker:
    role: str  # "executor" or the sensor label, e.g. "pcap:eth0"
    module: str
    config: dict[str, Any]
    schema: dict[str, dict[str, tuple[type, ...]]]
    log_name: str  # "executor", "sensor pcap eth0"
    link: Link | None = None  # what speaks for it: its link takes it when made
    pid: int = 0
    sock: socket.socket | None = None
    started: float = 0.0
    last_heard: float = 0.0
    ready: bool = False  # said hello and passed the checks
    mode: wire.Mode = wire.Mode.STARTING
    restarts: int = 0
    backoff: Backoff = Backoff()
    delay: float = 0.0  # before the next replacement; 0: the backoff's first
    respawn_at: float | None = None
    exit_reason: str = ""
    last_error: str = ""  # the last error this process reported, cleaned
    last_exit: str = ""  # how the previous process ended, for status
    hung_up_at: float | None = None  # closed its channel; killed if it lingers
    # The executor: root's own, it keeps the daemon's environment (its
    # commands run in it) and stdout and stderr (a crash's traceback reaches
    # the log). Other workers get SENSOR_ENV and /dev/null.
    inherits_environment: bool = False

    @property
    def alive(self) -> bool:
        return self.pid != 0

    def spawn(self, now: float) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.pid = self.start_process(child)
        except OSError:
            parent.close()
            raise
        finally:
            child.close()
        parent.setblocking(False)
        self.sock = parent
        self.started = self.last_heard = now
        self.ready = False
        self.mode = wire.Mode.STARTING
        self.respawn_at = None
        self.hung_up_at = None
        self.exit_reason = ""
        self.last_error = ""
        self.send("config", **self.config)

    def start_process(self, channel: socket.socket) -> int:
        """The worker's process, holding ``channel`` as CHANNEL_FD; its pid."""
        os.set_inheritable(channel.fileno(), True)
        argv = [
            sys.executable, "-S", "-P", "-c", BOOT, *import_path(), self.module,
            str(CHANNEL_FD), str(os.getpid()),
        ]
        return os.posix_spawn(
            sys.executable,
            argv,
            os.environ if self.inherits_environment else SENSOR_ENV,
            setsid=True,
            file_actions=spawn_fds(channel.fileno(), keep_output=self.inherits_environment),
        )

    def send(self, kind: str, /, **fields: Any) -> bool:
        """False when the worker cannot take it (gone, or its queue is full)."""
        if self.sock is None:
            return False
        try:
            wire.send(self.sock, kind, **fields)
        except OSError:
            return False
        return True

    def receive(self) -> list[bytes]:
        """Every record waiting; a trailing b"" means the worker hung up."""
        records: list[bytes] = []
        assert self.sock is not None
        while len(records) < 64:
            try:
                data = wire.recv(self.sock)
            except BlockingIOError:
                break
            except OSError:
                data = b""
            records.append(data)
            if not data:
                break
        return records

    def silent_at(self, beat: float) -> float:
        # Before hello the interpreter is still starting, which on a loaded
        # machine can take longer than a few short beats.
        limit = SILENT_BEATS * beat if self.ready else max(SILENT_BEATS * beat, HELLO_GRACE)
        return self.last_heard + limit

    def silent(self, now: float, beat: float) -> bool:
        return self.alive and now >= self.silent_at(beat)

    def deadline(self, beat: float) -> float | None:
        """When the supervisor must look at this worker again if it hears
        nothing: its silence limit, or a beat after it closed its channel.
        None once it is being killed: its reap wakes the supervisor."""
        if not self.alive or self.exit_reason:
            return None
        if self.hung_up_at is not None:
            return self.hung_up_at + beat
        return self.silent_at(beat)

    def privileges_left(self, uid: int, gid: int) -> list[str]:
        """What is still privileged about the process, read from /proc."""
        return privcheck.privileges_left(self.pid, uid, gid, self.config.get("jail"))

    def seccomp_killing(self) -> bool:
        """The process is being killed by its seccomp filter (read from /proc)."""
        return privcheck.seccomp_killing(self.pid)

    def kill(self, reason: str) -> None:
        """SIGKILL; the reap brings the replacement. The first reason sticks."""
        if not self.exit_reason:
            self.exit_reason = reason
        if self.alive:
            self.signal(signal.SIGKILL)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def close(self) -> socket.socket | None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()
        return sock

    def reaped(self, now: float) -> float:
        """The process is gone: schedule the replacement, return its delay."""
        ran = now - self.started
        self.pid = 0
        self.ready = False
        if ran >= self.backoff.healthy_after:
            self.delay = 0.0
        self.restarts += 1
        return self.retry_later(now)

    def retry_later(self, now: float) -> float:
        """Start it again after the backoff's next delay (a replacement, or
        a spawn that failed); returns the delay."""
        self.mode = wire.Mode.RESTARTING
        delay = self.delay or self.backoff.first
        self.delay = min(delay * 2, self.backoff.longest)
        self.respawn_at = now + delay
        return delay
