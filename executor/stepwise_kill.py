"""Killing a run's processes in steps, whichever way they are found: the
run's cgroup (``cgroup.RunGroup``) or, where there is none, the marker
fallback (``marker_fallback.Marked``, which needs psutil).

Stdlib only: where the cgroup serves, an executor running as ``--exec-user``
never has to import anything more after it dropped root.
"""

from __future__ import annotations

# typing is for the type checker alone: the executor would carry it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object

TERM_GRACE = 2.0
STEP_INTERVAL = 0.05
# SIGKILL rounds before giving up on a process that will not die (stuck in D
# state, or out of reach because it changed uid).
MAX_KILL_ROUNDS = 40


class Processes(Protocol):
    """The processes of one run."""

    @property
    def whole(self) -> bool:
        """Whether every process of the run is found, or only those in sight."""
        ...

    def root_reaped(self) -> None:
        """The command itself is reaped: its pid may be reused from now on."""

    def alive(self) -> list[int]:
        """Look again: the pids of the run still alive."""
        ...

    def terminate(self) -> None:
        """SIGTERM to those found by the last ``alive``."""

    def kill(self) -> None:
        """SIGKILL to all of them, with no chance to fork in between."""

    def done(self) -> None:
        """Nothing of the run is left: clean up."""


def kill_now(procs: Processes) -> None:
    """Last resort when the executor itself fails: no grace, no waiting."""
    procs.alive()
    procs.kill()


class StepwiseKill:
    """Kills a run's processes in steps, so the event loop (and the beat) never
    waits on it: SIGTERM to all, up to TERM_GRACE for them to go, then
    SIGKILL to whatever is left, looking again every step so that nothing
    forked in between escapes."""

    def __init__(self, procs: Processes, now: float) -> None:
        self.procs = procs
        procs.alive()
        procs.terminate()
        self.term_until = now + TERM_GRACE
        self.next_step = now + STEP_INTERVAL
        self.rounds = 0
        self.finished = False
        self.survivors: list[int] = []

    def root_reaped(self) -> None:
        self.procs.root_reaped()

    def step(self, now: float) -> None:
        if self.finished or now < self.next_step:
            return
        self.next_step = now + STEP_INTERVAL
        alive = self.procs.alive()
        if not alive:
            self.finished = True
            self.procs.done()
        elif now < self.term_until:
            return
        elif self.rounds >= MAX_KILL_ROUNDS:
            self.finished = True
            self.survivors = alive
        else:
            self.rounds += 1
            self.procs.kill()
