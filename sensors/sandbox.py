"""Install the seccomp allow-list that the supervisor built (supervisor/
allowlist.py says what it allows, and why) and sent in the sensor's config,
as a classic BPF program. Nothing of libseccomp is loaded here: the sensor
hands the kernel the program, with the prctl a filter is installed with.

Called once root is dropped: no_new_privs, which the drop sets, is what lets
an unprivileged process install a filter. For good: a filter cannot be
removed, only narrowed by another.
"""

from __future__ import annotations

from collections.abc import Sequence

from tuninetd.common import worker
from tuninetd.sensors import fprog

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2


def confine(program: Sequence[Sequence[int]]) -> None:
    prog = fprog.Program(program)  # its buffer must live through the call
    worker.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog.fprog)
