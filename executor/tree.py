"""The processes of one run: finding them, killing them, reaping orphans.

The executor is a child subreaper, so whatever a command leaves behind after
setsid and fork is re-parented to the executor instead of init. Each command
gets ``TUNINETD_RUN_ID`` in its environment: among the executor's adopted
processes, that tells the ones of the run being killed from daemons that
earlier commands left running on purpose. The supervisor, a subreaper too,
uses the same scan when the executor died in the middle of a run.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterable

import psutil

from tuninetd.executor.runner import RUN_ID_VAR

TERM_GRACE = 2.0
STEP_INTERVAL = 0.05
# SIGKILL rounds before giving up on a process that will not die (stuck in D
# state, or out of reach because it changed uid).
MAX_KILL_ROUNDS = 40


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


def kill_now(run_id: int, root_pid: int | None = None) -> int:
    """Last resort when the executor itself fails, or died (then the caller
    is the supervisor, which adopted the run's processes): no grace, no
    waiting. Only our own descendants: another tuninetd on the same host
    numbers its runs from 1 too. Returns how many were killed."""
    procs = collect(run_id, root_pid, ()).values()
    signal_all(procs, signal.SIGSTOP)
    signal_all(procs, signal.SIGKILL)
    return len(procs)


class TreeKill:
    """Kills a run's processes in steps, so the event loop (and the beat) never
    waits on it: SIGTERM to all, up to TERM_GRACE for them to go, then
    SIGSTOP and SIGKILL to whatever is left, re-scanning every step so that
    nothing forked in between escapes."""

    def __init__(self, run_id: int, root_pid: int | None, now: float) -> None:
        self.run_id = run_id
        self.root_pid = root_pid
        self.procs = collect(run_id, root_pid, ())
        signal_all(self.procs.values(), signal.SIGTERM)
        self.term_until = now + TERM_GRACE
        self.next_step = now + STEP_INTERVAL
        self.rounds = 0
        self.finished = False
        self.survivors: list[int] = []

    def root_reaped(self) -> None:
        self.root_pid = None

    def step(self, now: float) -> None:
        if self.finished or now < self.next_step:
            return
        self.next_step = now + STEP_INTERVAL
        self.procs = collect(self.run_id, self.root_pid, self.procs.values())
        if not self.procs:
            self.finished = True
        elif now < self.term_until:
            return
        elif self.rounds >= MAX_KILL_ROUNDS:
            self.finished = True
            self.survivors = sorted(self.procs)
        else:
            self.rounds += 1
            # Stopped first, so none of them can fork or restart another
            # while the others are being killed.
            signal_all(self.procs.values(), signal.SIGSTOP)
            signal_all(self.procs.values(), signal.SIGKILL)
