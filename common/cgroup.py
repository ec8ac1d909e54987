"""Each command run in a cgroup v2 of its own, killed as a whole with
``cgroup.kill``: no process of the run can leave it, whatever it does with
setsid, double forks or a clean environment.

The layout, under the cgroup the supervisor runs in (the unit's own cgroup
under systemd with ``Delegate=yes``)::

    <supervisor's cgroup>/tuninetd-<supervisor pid>/run-<id>    one per run

The executor waits in the cgroup of the run it expects next (the supervisor
numbers the runs it hands over 1, 2, 3 ...), so the command it spawns starts
there without a migration on the way: moving a process between cgroups
takes the kernel's cgroup thread-group lock for writing, which waits for an
RCU grace period, milliseconds on a small VM. The executor moves on to the
next run's cgroup once the command runs. The daemon's directory holds no
process itself (cgroup v2's no-internal-processes rule). The supervisor
finds a run from its own pid and the run id alone, so it can kill the run of
an executor that died.

An executor running as ``--exec-user`` is given nothing of the tree: every
cgroup stays root's, so a command (the same user) cannot write itself into
another cgroup and out of its run's ``cgroup.kill``. Moving a process needs
write access to the common ancestor of the two cgroups, the daemon's
directory, which that user does not have. The supervisor makes each next
run's cgroup and hands the executor descriptors of its ``cgroup.procs`` and
``cgroup.kill``, opened as root (``prepare``); the kernel checks a write to
``cgroup.procs`` against the credentials it was opened with (Linux 5.16, and
the stable kernels it went back to). The executor, kept from ptrace and
/proc by its not being dumpable, moves itself in with the one and kills the
run with the other.

Where no cgroup2 is mounted but the daemon has a mount namespace of its own
(``ip netns exec`` gives it one, with a fresh /sys that has no cgroup file
systems), ``setup`` mounts cgroup2 at /sys/fs/cgroup in that namespace,
where no one else sees it (not where that mount would propagate to others).
Where no writable cgroup v2 hierarchy with ``cgroup.kill`` (Linux 5.14) is
found even so, ``setup`` says why and the executor falls back to the run-id
marker.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal

GROUP_PREFIX = "tuninetd-"
RUN_PREFIX = "run-"
# Every process of a run carries this in its environment (the value is the
# run's id, as in its cgroup's name): where there is no cgroup, it tells the
# run's processes from the daemons earlier commands left running on purpose.
RUN_ID_VAR = "TUNINETD_RUN_ID"


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


MOUNT_POINT = "/sys/fs/cgroup"
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8


def _mount_of(path: str, mountinfo: str = "/proc/self/mountinfo") -> list[str]:
    """The mountinfo fields of the mount that holds ``path``."""
    best, found = "", []
    with open(mountinfo) as f:
        for line in f:
            fields = line.split()
            point = _unescape(fields[4])
            inside = path == point or path.startswith(point.rstrip("/") + "/")
            if inside and len(point) >= len(best):
                best, found = point, fields
    return found


def _own_mount_namespace() -> bool:
    """This process's mount namespace is not the host's: it differs from
    init's or, where init's cannot be read, /sys is the sysfs that ``ip
    netns exec`` mounts in the mount namespace it makes (its source is the
    name of this process's network namespace in /run/netns)."""
    try:
        return os.readlink("/proc/self/ns/mnt") != os.readlink("/proc/1/ns/mnt")
    except OSError:
        pass
    fields = _mount_of("/sys")
    if not fields or fields[4] != "/sys" or fields[fields.index("-") + 1] != "sysfs":
        return False
    source = _unescape(fields[fields.index("-") + 2])
    try:
        named, own = os.stat(f"/run/netns/{source}"), os.stat("/proc/self/ns/net")
    except (OSError, ValueError):
        return False
    return "/" not in source and (named.st_dev, named.st_ino) == (own.st_dev, own.st_ino)


def mount_own() -> None:
    """cgroup2 at /sys/fs/cgroup, for this mount namespace alone; Unavailable
    with the reason when that is not this process's to do."""
    if not _own_mount_namespace():
        raise Unavailable("no cgroup2 file system mounted")
    mount = _mount_of(MOUNT_POINT)
    if any(x.startswith("shared:") for x in mount[6:mount.index("-")]):
        raise Unavailable(f"no cgroup2 file system mounted, and a mount at {MOUNT_POINT} "
                          "would propagate out of this mount namespace")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"cgroup2", MOUNT_POINT.encode(), b"cgroup2",
                  MS_NOSUID | MS_NODEV | MS_NOEXEC, None) != 0:
        err = ctypes.get_errno()
        raise Unavailable(f"no cgroup2 file system mounted, and mounting one in this mount "
                          f"namespace failed ({os.strerror(err)})")


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
    """The run cgroups of one daemon, in ``directory``; the executor is in
    the one of run ``standby``."""

    def __init__(self, directory: str, standby: int = 0, privileged: bool = True) -> None:
        self.directory = directory
        self.standby = standby
        # False for an --exec-user executor: it moves only with what
        # ``adopt`` is given, and kills with the descriptors in ``kills``.
        self.privileged = privileged
        self.kills: dict[int, int] = {}

    @classmethod
    def setup(cls, supervisor_pid: int, uid: int | None, first_run: int) -> RunGroups:
        """Create the daemon's directory and move this process into the
        cgroup of ``first_run``; for an executor that will run as ``uid``,
        open that run's ``cgroup.kill`` while still root. Raises Unavailable
        with the reason."""
        try:
            if not cgroup2_mounts():
                mount_own()
            directory = daemon_group(supervisor_pid)
            remove_stale(os.path.dirname(directory))
            with contextlib.suppress(FileExistsError):
                os.mkdir(directory, 0o755)
            if not os.path.exists(os.path.join(directory, "cgroup.kill")):
                raise Unavailable("cgroup.kill is missing (Linux 5.14 or later has it)")
            groups = cls(directory)
            groups.enter(first_run)
            if uid is not None:
                groups.privileged = False
                groups.kills[first_run] = _open(groups.path(first_run), "cgroup.kill")
        except OSError as exc:
            raise Unavailable(f"{exc.filename or 'cgroup'}: {exc.strerror or exc}") from None
        return groups

    def path(self, run_id: int) -> str:
        return os.path.join(self.directory, f"{RUN_PREFIX}{run_id}")

    def procs(self, run_id: int) -> str:
        return os.path.join(self.path(run_id), "cgroup.procs")

    def join(self, run_id: int) -> RunGroup:
        """The run's cgroup, with this process in it: at once when it waits
        there already, as it does for every run numbered as expected.
        OSError when an unprivileged executor was not moved there."""
        if run_id != self.standby:
            if not self.privileged:
                raise OSError(errno.ENOENT, f"no cgroup handed over for run {run_id}")
            self.enter(run_id)
        return RunGroup(self.path(run_id), self.kills.get(run_id))

    def move_on(self, run_id: int) -> None:
        """Out of the cgroup of ``run_id``, which has its command, into the
        next run's. An OSError here ends the executor: staying would put it
        under the run's ``cgroup.kill``. An unprivileged executor waits for
        the next run's cgroup from the supervisor instead (``adopt``)."""
        if self.privileged:
            self.enter(run_id + 1)

    def adopt(self, run_id: int, procs: int, kill: int) -> None:
        """The cgroup of ``run_id`` made by the supervisor, as ``prepare``'s
        two descriptors: this process moves in. The ``cgroup.kill`` of runs
        before the one that may still run are closed."""
        try:
            try:
                os.write(procs, b"0")
            finally:
                os.close(procs)
        except OSError:
            os.close(kill)
            raise
        self.standby = run_id
        for old in [k for k in self.kills if k < run_id - 1]:
            os.close(self.kills.pop(old))
        self.kills[run_id] = kill

    def enter(self, run_id: int) -> None:
        """Make the run's cgroup, remove the empty ones of earlier runs, and
        move this process in."""
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.path(run_id), 0o755)
        _write(self.procs(run_id), "0")
        self.standby = run_id
        self.sweep()

    def sweep(self, prefix: str = RUN_PREFIX, before: int | None = None) -> None:
        """Remove the cgroups of earlier runs that nothing lives in any more
        (one that a started daemon still lives in stays, and so does the
        executor's); with ``before``, only those of runs numbered lower."""
        with contextlib.suppress(OSError), os.scandir(self.directory) as entries:
            for entry in entries:
                if not entry.is_dir() or not entry.name.startswith(prefix):
                    continue
                number = entry.name.removeprefix(RUN_PREFIX)
                if before is None or (number.isdigit() and int(number) < before):
                    with contextlib.suppress(OSError):
                        os.rmdir(entry.path)

    def remove(self) -> None:
        """At the daemon's exit, once its executor is gone: every empty cgroup
        of it, and its directory if nothing is left."""
        self.sweep("")
        with contextlib.suppress(OSError):
            os.rmdir(self.directory)


def _open(directory: str, name: str) -> int:
    return os.open(os.path.join(directory, name), os.O_WRONLY | os.O_CLOEXEC)


def prepare(supervisor_pid: int, run_id: int) -> tuple[int, int]:
    """As root, for an executor that runs as --exec-user: the cgroup of run
    ``run_id`` made, the empty ones of earlier runs removed, and descriptors
    of its ``cgroup.procs`` and ``cgroup.kill`` opened (RunGroups.adopt).
    OSError or Unavailable when there is no cgroup tree to make it in."""
    groups = RunGroups(daemon_group(supervisor_pid))
    # Not the run before: made for the executor, it may not have moved in yet.
    groups.sweep(before=run_id - 1)
    path = groups.path(run_id)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o755)
    procs = _open(path, "cgroup.procs")
    try:
        return procs, _open(path, "cgroup.kill")
    except OSError:
        os.close(procs)
        raise


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


class RunGroup:
    """One run's cgroup: the processes in it, which none of them can leave
    (``stepwise_kill.Processes``)."""

    whole = True

    def __init__(self, path: str, kill_fd: int | None = None) -> None:
        self.path = path
        self.kill_fd = kill_fd  # cgroup.kill opened by root, for an --exec-user executor

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
        """SIGKILL to every process in it and below, new forks included;
        process by process, sparing this one, if this one is still in it (an
        --exec-user executor that was handed no next cgroup)."""
        if self.kill_fd is not None and os.getpid() in self.pids():
            for pid in self.pids():
                if pid != os.getpid():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        elif self.kill_fd is not None:
            os.write(self.kill_fd, b"1")
        else:
            _write(os.path.join(self.path, "cgroup.kill"), "1")

    def done(self) -> None:
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
