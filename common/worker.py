"""What every worker process does the same way: find its socket, die with the
supervisor, show its state in ``ps``, drop privileges for good.

Stdlib plus setproctitle only: sensors import this before dropping root and
must stay small and quick to start.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import signal
import socket
import sys
from collections.abc import Callable

from tuninetd.common import wire

PR_SET_PDEATHSIG = 1
PR_SET_NAME = 15
PR_SET_DUMPABLE = 4
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_SET_CHILD_SUBREAPER = 36
CAP_LAST_CAP_FILE = "/proc/sys/kernel/cap_last_cap"

# A worker with nothing to report says it is alive every HEARTBEAT_BEATS
# beats (the supervisor's silence limit allows for it). Its wake-ups fall on
# multiples of the period on CLOCK_MONOTONIC, which every process shares, so
# the heartbeats of all workers reach the supervisor together: one wake-up.
HEARTBEAT_BEATS = 6
# Where every worker finds its end of the socketpair: the supervisor puts it
# there at the spawn. A fixed number lets the sensors' seccomp allow-list,
# built once, name the one descriptor they may send on.
CHANNEL_FD = 3

_libc = ctypes.CDLL(None, use_errno=True)


def _title_setter() -> Callable[[str], None]:
    """setproctitle's C function, loaded without its package: the package's
    ``__init__`` imports logging for one debug line, in every worker."""
    import importlib.machinery
    import importlib.util

    spec = importlib.util.find_spec("setproctitle")  # found, not run
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, f"_setproctitle{suffix}")
            if os.path.exists(path):
                name = "setproctitle._setproctitle"
                loader = importlib.machinery.ExtensionFileLoader(name, path)
                module = importlib.util.module_from_spec(
                    importlib.util.spec_from_file_location(name, path, loader=loader)
                    or importlib.machinery.ModuleSpec(name, loader))
                loader.exec_module(module)
                setter: Callable[[str], None] = module.setproctitle
                return setter
    from setproctitle import setproctitle  # a build without the package layout

    return setproctitle


setproctitle = _title_setter()


def next_tick(now: float, period: float) -> float:
    """The first multiple of ``period`` after ``now`` (CLOCK_MONOTONIC seconds)."""
    return (now // period + 1) * period


def prctl(option: int, arg: int | bytes = 0, arg3: int | bytes = 0) -> None:
    if _libc.prctl(option, arg, arg3, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


class Title:
    """The ``ps`` title (full) and the comm name (``pgrep -x``).

    setproctitle also rewrites the comm name, so the short name is set again
    after every title change.
    """

    def __init__(self, prefix: str, comm: str) -> None:
        self.prefix = prefix
        self.comm = comm.encode()[:15]
        self.current = ""

    def set(self, state: str) -> None:
        title = f"{self.prefix} {state}" if state else self.prefix
        if title != self.current:
            setproctitle(title)
            prctl(PR_SET_NAME, self.comm)
            self.current = title


def channel_from_argv() -> tuple[socket.socket, int]:
    """The inherited socketpair end (fd in argv[1]) and the supervisor's pid (argv[2])."""
    if len(sys.argv) != 3:
        sys.exit("tuninetd workers are started by the tuninetd supervisor")
    fd, ppid = int(sys.argv[1]), int(sys.argv[2])
    sock = socket.socket(fileno=fd)
    os.set_inheritable(fd, False)
    return sock, ppid


def die_with_parent(ppid: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel for ``sig`` when the supervisor dies.

    Must be called again after a credential change, which clears it; the
    getppid check closes the race where the parent died before the call.
    """
    prctl(PR_SET_PDEATHSIG, sig)
    if os.getppid() != ppid:
        os._exit(1)


def ignore_terminal_signals() -> None:
    """Only the supervisor decides when workers stop."""
    for sig in (signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def drop_privileges(uid: int, gid: int, ppid: int, jail: str | None = None) -> None:
    """Become uid/gid for good: no groups, no capabilities, no way back.

    With ``jail`` (an empty directory owned by root), chroot there first, so a
    compromised sensor sees no file at all. The bounding set is emptied while
    we still hold CAP_SETPCAP, so not even a setuid binary could give
    capabilities back (no_new_privs blocks that too). Not dumpable: sensors
    sharing a uid cannot ptrace or read each other's memory.
    """
    try:
        with open(CAP_LAST_CAP_FILE) as f:
            last_cap = int(f.read())
    except OSError:
        last_cap = 40
    if jail is not None:
        os.chroot(jail)
        os.chdir("/")
    for cap in range(last_cap + 1):
        try:
            prctl(PR_CAPBSET_DROP, cap)
        except OSError as exc:
            if exc.errno != errno.EINVAL:  # past the kernel's last capability
                raise
            break
    # Read back, whatever the drops said: any capability left is a failure.
    kept = [cap for cap in range(last_cap + 1) if _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0) == 1]
    if kept:
        raise PermissionError(f"capabilities {kept} still in the bounding set")
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    prctl(PR_SET_NO_NEW_PRIVS, 1)
    prctl(PR_SET_DUMPABLE, 0)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise PermissionError("privilege drop did not take")
    die_with_parent(ppid)


def fatal(sock: socket.socket, reason: str) -> None:
    """Tell the supervisor why we stop, then stop."""
    with contextlib.suppress(OSError):
        wire.send(sock, "error", reason=wire.clean_text(reason), fatal=True)
    os._exit(1)
