"""tuninetd executor: runs the start and stop commands for the supervisor,
which starts it (supervisor/children.py) with its channel on descriptor
CHANNEL_FD and its own pid, and runs ``main``.
"""

from __future__ import annotations

import os
import signal
import socket
import sys

from tuninetd.common import cgroup, signals, wire, worker
from tuninetd.common.cgroup import RUN_ID_VAR
from tuninetd.executor.config import Config, parse_config, switch_user
from tuninetd.executor.loop import Executor
from tuninetd.executor.runner import close_on_exec

WATCHED_SIGNALS = (signal.SIGTERM, signal.SIGCHLD, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1)


def receive_config(sock: socket.socket) -> Config:
    data = wire.recv(sock)
    if not data:
        sys.exit(0)  # the supervisor went away before configuring us
    return parse_config(wire.decode(data))


def start(sock: socket.socket, ppid: int) -> Executor:
    title = worker.Title("tuninetd: executor", "tuninetd-exec")
    title.set("starting")
    worker.die_with_parent(ppid, signal.SIGTERM)
    worker.ignore_terminal_signals()
    # Whatever a command leaves behind after setsid and fork is re-parented to
    # us, not to init: it can be reaped, and killed when its run times out.
    worker.prctl(worker.PR_SET_CHILD_SUBREAPER, 1)
    config = receive_config(sock)
    close_on_exec()
    title.prefix = f"tuninetd: executor {config.name}".rstrip()
    # Made while still root: an --exec-user could not.
    try:
        groups: cgroup.RunGroups | None = cgroup.RunGroups.setup(
            ppid, config.uid, config.first_run)
        no_cgroup = ""
    except cgroup.Unavailable as exc:
        groups, no_cgroup = None, str(exc)
        # The fallback's psutil, while the interpreter's files are surely
        # readable: an --exec-user may not be able to load it later.
        from tuninetd.common import marker_fallback  # noqa: F401
    if config.uid is not None:
        switch_user(config)
        worker.die_with_parent(ppid, signal.SIGTERM)  # a uid change cleared it
    executor = Executor(sock, config, title, signals.wakeup_fd(WATCHED_SIGNALS), groups)
    wire.send(sock, "hello", pid=os.getpid())
    if no_cgroup:
        wire.send(
            sock,
            "error",
            reason=wire.clean_text(
                f"no cgroup for the commands ({no_cgroup}): a timed-out command is killed "
                f"through its {RUN_ID_VAR} marker, and processes that drop it may survive; "
                "to kill the whole tree, run under systemd (the units delegate a cgroup) "
                "or mount cgroup2 on /sys/fs/cgroup (Linux 5.14 or later)"
            ),
            fatal=False,
        )
    title.set("idle")
    return executor


def main() -> None:
    sock, ppid = worker.channel_from_argv()
    try:
        start(sock, ppid).serve()
    except Exception as exc:
        worker.fatal(sock, f"executor: {type(exc).__name__}: {exc}")
    sys.exit(0)


if __name__ == "__main__":
    main()
