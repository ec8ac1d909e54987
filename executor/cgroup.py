"""Each command run in a cgroup v2 of its own, killed as a whole with
``cgroup.kill``: no process of the run can leave it, whatever it does with
setsid, double forks or a clean environment.

The layout, under the cgroup the supervisor runs in (the unit's own cgroup
under systemd with ``Delegate=yes``)::

    <supervisor's cgroup>/tuninetd-<supervisor pid>/executor    the executor
    <supervisor's cgroup>/tuninetd-<supervisor pid>/run-<id>    one per run

The daemon's directory holds no process itself, and the executor sits in a
leaf beside its runs: that keeps cgroup v2's no-internal-processes rule, and
an executor running as ``--exec-user`` can move its children into their run
(moving needs write access to the common ancestor, the daemon's directory,
which is handed to that user). The supervisor finds a run from its own pid
and the run id alone, so it can kill the run of an executor that died.

Where no writable cgroup v2 hierarchy with ``cgroup.kill`` (Linux 5.14) is
found, ``setup`` says why and the executor falls back to the run-id marker.
"""

from __future__ import annotations

import contextlib
import os
import signal

GROUP_PREFIX = "tuninetd-"
EXECUTOR_LEAF = "executor"
RUN_PREFIX = "run-"


class Unavailable(Exception):
    """No usable cgroup v2 here; the message says why."""


def _unescape(field: str) -> str:
    """mountinfo escapes space, tab, newline and backslash as octal."""
    return field.encode().decode("unicode_escape").encode("latin-1").decode(errors="replace")


def cgroup2_mounts(mountinfo: str = "/proc/self/mountinfo") -> list[tuple[str, str]]:
    """(cgroup path at the mount's root, mount point) of every cgroup2 mount."""
    mounts = []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            try:
                dash = fields.index("-")
            except ValueError:
                continue
            if fields[dash + 1 : dash + 2] == ["cgroup2"]:
                mounts.append((_unescape(fields[3]), _unescape(fields[4])))
    return mounts


def cgroup_of(pid: int) -> str:
    """The cgroup v2 path of a process (the ``0::`` line of /proc/PID/cgroup)."""
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            if line.startswith("0::"):
                return line[3:].rstrip("\n")
    raise Unavailable(f"no cgroup v2 membership in /proc/{pid}/cgroup")


def directory_of(cgroup: str) -> str:
    """Where a cgroup v2 path lives in the file system."""
    for root, mount in cgroup2_mounts():
        if cgroup == root or cgroup.startswith(root.rstrip("/") + "/"):
            return os.path.join(mount, cgroup[len(root) :].lstrip("/"))
    raise Unavailable("no cgroup2 file system mounted")


def daemon_group(supervisor_pid: int) -> str:
    """The directory that holds the executor's leaf and the runs of one daemon."""
    base = directory_of(cgroup_of(supervisor_pid))
    return os.path.join(base, f"{GROUP_PREFIX}{supervisor_pid}")


def _write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


class RunGroups:
    """The run cgroups of one daemon, in ``directory``."""

    def __init__(self, directory: str) -> None:
        self.directory = directory

    @classmethod
    def setup(cls, supervisor_pid: int, uid: int | None) -> RunGroups:
        """Create the daemon's directory, move this process into its executor
        leaf and, for an executor that will run as ``uid``, hand the
        directory over. Raises Unavailable with the reason."""
        try:
            directory = daemon_group(supervisor_pid)
            remove_stale(os.path.dirname(directory))
            leaf = os.path.join(directory, EXECUTOR_LEAF)
            for path in (directory, leaf):
                with contextlib.suppress(FileExistsError):
                    os.mkdir(path, 0o755)
            if not os.path.exists(os.path.join(directory, "cgroup.kill")):
                raise Unavailable("cgroup.kill is missing (Linux 5.14 or later has it)")
            _write(os.path.join(leaf, "cgroup.procs"), "0")
            if uid is not None:
                # Its own leaf's too: it goes back there after each spawn.
                for path in (directory, os.path.join(directory, "cgroup.procs"),
                             os.path.join(leaf, "cgroup.procs")):
                    os.chown(path, uid, -1)
        except OSError as exc:
            raise Unavailable(f"{exc.filename or 'cgroup'}: {exc.strerror or exc}") from None
        return cls(directory)

    @property
    def home(self) -> str:
        """The executor's own leaf's ``cgroup.procs``."""
        return os.path.join(self.directory, EXECUTOR_LEAF, "cgroup.procs")

    def path(self, run_id: int) -> str:
        return os.path.join(self.directory, f"{RUN_PREFIX}{run_id}")

    def create(self, run_id: int) -> RunGroup:
        self.sweep()
        path = self.path(run_id)
        with contextlib.suppress(FileExistsError):
            os.mkdir(path, 0o755)
        return RunGroup(path)

    def sweep(self, prefix: str = RUN_PREFIX) -> None:
        """Remove the cgroups of earlier runs that nothing lives in any more
        (one that a started daemon still lives in stays)."""
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.is_dir() and entry.name.startswith(prefix):
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)

    def remove(self) -> None:
        """At the daemon's exit, once its executor is gone: every empty cgroup
        of it, and its directory if nothing is left."""
        self.sweep("")
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)


def remove_daemon_group(supervisor_pid: int) -> None:
    """What the supervisor calls at exit."""
    with contextlib.suppress(Unavailable, OSError):
        RunGroups(daemon_group(supervisor_pid)).remove()


def remove_stale(parent: str) -> None:
    """The empty cgroups of daemons that died without removing theirs
    (SIGKILL): their supervisor's pid is gone. A cgroup something still runs
    in stays."""
    with contextlib.suppress(OSError), os.scandir(parent) as entries:
        for entry in entries:
            pid = entry.name.removeprefix(GROUP_PREFIX)
            if pid != entry.name and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
                RunGroups(entry.path).remove()


def enter(procs: str) -> None:
    """Move this process into the cgroup whose ``cgroup.procs`` is ``procs``.

    The executor joins a run's cgroup while it spawns the command, which so
    starts there: nothing the command does happens outside it, and the spawn
    needs no code between fork and exec (a preexec_fn forces a full fork;
    without one, subprocess uses vfork, about 0.5 ms instead of several)."""
    _write(procs, "0")


class RunGroup:
    """One run's cgroup: the processes in it, which none of them can leave
    (``treekill.Processes``)."""

    whole = True

    def __init__(self, path: str) -> None:
        self.path = path
        self.procs = os.path.join(path, "cgroup.procs")  # a process writes "0" to join

    def pids(self) -> list[int]:
        """Every process in it and in any cgroup it made below."""
        pids: list[int] = []
        for directory, _, _ in os.walk(self.path):
            procs = os.path.join(directory, "cgroup.procs")
            with contextlib.suppress(OSError), open(procs) as f:
                pids += [int(pid) for pid in f.read().split()]
        return pids

    def populated(self) -> bool:
        try:
            with open(os.path.join(self.path, "cgroup.events")) as f:
                return "populated 1" in f.read().splitlines()
        except FileNotFoundError:
            return False

    def root_reaped(self) -> None:
        """Its pid does not matter here."""

    def alive(self) -> list[int]:
        return sorted(self.pids()) if self.populated() else []

    def terminate(self) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL to every process in it and below, new forks included."""
        _write(os.path.join(self.path, "cgroup.kill"), "1")

    def done(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
