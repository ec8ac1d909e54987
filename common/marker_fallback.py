"""The marker fallback: a run's processes found where it has no cgroup.

Where the host allows it, a run is its cgroup (``cgroup``): killing that
leaves nothing behind (``kill_run``, for the supervisor, tries it first).
Elsewhere the executor falls back to what it can see:
it is a child subreaper, so whatever a command leaves behind after setsid and
fork is re-parented to the executor instead of init, and each command gets
``TUNINETD_RUN_ID`` in its environment; among the executor's adopted
processes, that tells the ones of the run being killed from daemons that
earlier commands left running on purpose. A process that drops both (``setsid
env -i ...``) escapes the fallback, and the executor says so.
"""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterable
from typing import NamedTuple

import psutil

from tuninetd.common.cgroup import (
    RUN_ID_VAR,
    RunGroup,
    RunGroups,
    Unavailable,
    daemon_group,
)


def is_alive(proc: psutil.Process) -> bool:
    """Alive and still the same process; a zombie is dead already."""
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.children(recursive=True)
    except psutil.Error:
        return []


def carries_run_id(proc: psutil.Process, run_id: int) -> bool:
    try:
        return proc.environ().get(RUN_ID_VAR) == str(run_id)
    except psutil.Error:
        return False


def collect(
    run_id: int, root_pid: int | None, known: Iterable[psutil.Process]
) -> dict[int, psutil.Process]:
    """The live processes of a run: the command itself (``root_pid``, None once
    it is reaped, as its pid may then be reused), the descendants of it and of
    every process already known to be of the run (they may have dropped the
    environment variable, as sudo does), and every process the executor
    adopted that carries the run id."""
    anchors = list(known)
    if root_pid is not None:
        with contextlib.suppress(psutil.Error):
            anchors.append(psutil.Process(root_pid))
    found: dict[int, psutil.Process] = {}
    for proc in anchors:
        if is_alive(proc):
            found.setdefault(proc.pid, proc)
            for child in descendants(proc):
                found.setdefault(child.pid, child)
    for proc in descendants(psutil.Process()):
        if proc.pid not in found and carries_run_id(proc, run_id):
            found[proc.pid] = proc
    return {pid: proc for pid, proc in found.items() if is_alive(proc)}


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


class Marked:
    """The fallback where no cgroup is to be had: the run's processes are
    those ``collect`` finds (``stepwise_kill.Processes``). One that is no
    descendant of the command any more and dropped the marker (a double
    fork under ``setsid env -i``) is not found."""

    whole = False

    def __init__(self, run_id: int, root_pid: int | None) -> None:
        self.run_id = run_id
        self.root_pid = root_pid
        self.procs = collect(run_id, root_pid, ())

    def root_reaped(self) -> None:
        self.root_pid = None

    def alive(self) -> list[int]:
        self.procs = collect(self.run_id, self.root_pid, self.procs.values())
        return sorted(self.procs)

    def terminate(self) -> None:
        signal_all(self.procs.values(), signal.SIGTERM)

    def kill(self) -> None:
        # Stopped first, so none of them can fork or restart another while
        # the others are being killed.
        signal_all(self.procs.values(), signal.SIGSTOP)
        signal_all(self.procs.values(), signal.SIGKILL)

    def done(self) -> None:
        """Nothing to clean up."""


class Killed(NamedTuple):
    processes: int
    whole: bool  # through the run's cgroup: nothing of it is left

    def describe(self) -> str:
        if self.whole:
            return f"{self.processes} process(es) of it killed through its cgroup"
        return (f"{self.processes} process(es) of it that kept its {RUN_ID_VAR} killed; "
                "any that dropped it may survive")


def kill_run(run_id: int, supervisor_pid: int | None = None) -> Killed:
    """SIGKILL every process of one run of a daemon's executor (the caller's,
    by default) from outside the executor: the supervisor calls this when
    the executor died while running the command.

    Through the run's cgroup when there is one. Otherwise by the marker, and
    only among the caller's own descendants: as a subreaper it adopts what
    the run left behind, and another tuninetd on the same host numbers its
    runs from 1 too."""
    daemon = os.getpid() if supervisor_pid is None else supervisor_pid
    try:
        group = RunGroup(RunGroups(daemon_group(daemon)).path(run_id))
        pids = group.pids()
        group.kill()
    except (OSError, Unavailable):
        pass
    else:
        return Killed(len(pids), whole=True)
    procs = Marked(run_id, None)
    procs.kill()
    return Killed(len(procs.procs), whole=False)
