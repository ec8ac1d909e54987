"""Which daemon this is among those on the host: its name, and the files in
/run/tuninetd that go with it. The claimed name is the key of all of them:
the lock, the control socket (unless --control) and the state file take
their path from it here, and from nowhere else.

A name is held by an exclusive ``flock`` on ``/run/tuninetd/NAME.lock``, taken
before anything else is opened and kept until exit. The file is root's and
0600: a lock anyone can open, anyone can hold (a local user keeping a
crashed daemon's name taken), so one that others could open is replaced. The kernel drops it when
the daemon dies, however it dies, so a name is never left taken by a dead
daemon, and two daemons starting at the same moment cannot both get it.
/run is one directory for every network namespace, so names are unique on
the host, not per namespace. The lock file holds the holder's pid, for the
message that refuses a second daemon.

An explicit name (``--name``) that is held is refused. A name derived from
the sensors (``eth0``, ``nflog-1``, ``eth0+nflog-1``) is made unique instead:
``eth0-2``, ``eth0-3``... the first one free.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import stat
from collections.abc import Sequence
from dataclasses import dataclass

from tuninetd.supervisor.config.settings import SensorSpec
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.ops.control import in_use

RUN_DIR = "/run/tuninetd"
NAME_MAX = 64
NAME_CHARS = "A-Za-z0-9_.@+-"
_NAME = re.compile(f"[{NAME_CHARS}]{{1,{NAME_MAX}}}")
_NOT_NAME_CHAR = re.compile(f"[^{NAME_CHARS}]")
MOST_DERIVED = 999  # eth0 ... eth0-999: beyond that something is wrong


def problem(name: str) -> str | None:
    """What is wrong with ``name`` as a daemon name; None: nothing."""
    if _NAME.fullmatch(name):
        return None
    return f"expected 1 to {NAME_MAX} characters from letters, digits and _ . @ + -"


def derived(sensors: Sequence[SensorSpec]) -> str:
    """``eth0``, ``nflog-1``, ``eth0+nflog-1``: the sensors, in order."""
    parts = [s.name if s.kind == "pcap" else f"nflog-{s.name}" for s in sensors]
    # Interface names may hold characters a name may not (e.g. '#').
    return _NOT_NAME_CHAR.sub("_", "+".join(parts))[:NAME_MAX] or "tuninetd"


def socket_path(name: str) -> str:
    return f"{RUN_DIR}/{name}.sock"


def lock_path(name: str) -> str:
    return f"{RUN_DIR}/{name}.lock"


def state_path(name: str) -> str:
    return f"{RUN_DIR}/{name}.state"


def make_run_dir() -> None:
    """/run/tuninetd: root's, 0755, a real directory (not a symlink to
    somewhere an unprivileged user chose)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(RUN_DIR, 0o755)
    st = os.lstat(RUN_DIR)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != 0 or st.st_mode & 0o022:
        raise StartupError(f"{RUN_DIR} is not a directory owned by root and writable only "
                           "by root: remove it, tuninetd makes it again")


@dataclass
class Instance:
    """This daemon's name, held, and its control socket."""

    name: str
    control: str
    lock_fd: int

    @property
    def state_path(self) -> str:
        """The state file (supervisor/statefile.py): the name's, as the lock is."""
        return state_path(self.name)

    def release(self) -> None:
        """Remove the lock file while it is still held (a daemon taking the
        name at this moment sees the file gone, and makes a new one)."""
        if self.lock_fd < 0:
            return
        with contextlib.suppress(OSError):
            os.unlink(lock_path(self.name))
        os.close(self.lock_fd)
        self.lock_fd = -1


def holder(name: str) -> int | None:
    """The pid of the running daemon that holds ``name`` (0: one that is
    still starting, so its pid is not written yet); None: nobody."""
    try:
        fd = os.open(lock_path(name), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdecimal() else 0
        return None
    finally:
        os.close(fd)


def _ours(fd: int) -> bool:
    """A regular file of ours that no one else may open: a lock only we can take."""
    st = os.fstat(fd)
    return stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _lock(name: str) -> int | None:
    """The lock on ``name``'s file, held; None: another daemon holds it."""
    path = lock_path(name)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise StartupError(f"cannot take the name {name}: {path}: "
                               f"{exc.strerror or exc}") from None
        if not _ours(fd):
            # Anyone who can open a file can flock it, and hold the name for
            # good: such a file (e.g. an earlier release's 0644) is no lock.
            os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return None
            raise StartupError(f"cannot lock {path}: {exc.strerror or exc}") from None
        # Locked; but the holder we waited on may have removed the file just
        # before: then the lock is on a file nobody else will ever open.
        try:
            same = os.path.samestat(os.fstat(fd), os.lstat(path))
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return fd
        os.close(fd)


def claim(name: str | None, sensors: Sequence[SensorSpec], control: str | None) -> Instance:
    """Take ``name`` (explicit), or the first free name derived from the
    sensors; the control socket is ``control`` or the name's default."""
    make_run_dir()
    if name is not None:
        fd = _lock(name)
        if fd is None:
            raise StartupError(taken(name, holder(name)))
        return Instance(name, control or socket_path(name), fd)
    base = derived(sensors)
    for n in range(1, MOST_DERIVED + 1):
        suffix = f"-{n}" if n > 1 else ""
        candidate = base[:NAME_MAX - len(suffix)] + suffix
        fd = _lock(candidate)
        if fd is not None:
            return Instance(candidate, control or socket_path(candidate), fd)
    raise StartupError(f"names {base} to {base}-{MOST_DERIVED} are all taken by running "
                       "daemons: give this one a --name")


def taken(name: str, pid: int | None) -> str:
    who = f"pid {pid}" if pid else "a daemon that is starting"
    return (f"name {name} is taken: the tuninetd with {who} runs under it; "
            "give this one another --name")


def held(name: str | None, control: str | None) -> str | None:
    """For ``--check-config``: what a running daemon already holds of the
    explicit name and control socket, in words; None: nothing."""
    if name is not None and (pid := holder(name)) is not None:
        return taken(name, pid)
    if control is not None:
        try:
            alive = in_use(control)
        except OSError:
            alive = False  # not a socket, not ours to reach: the start will say
        if alive:
            return (f"control socket {control} is in use: another tuninetd is running "
                    "there; give this one its own --control")
    return None
