"""The sensor's last steps into its sandbox, once root is dropped.

``limit``: resource limits, as OpenSSH's sandboxed child sets them: no file
may grow (FSIZE 0), no process be made (NPROC 0), a few descriptors (what it
holds, and room for the pair of sockets handed over when its interface comes
back), and a bounded address space.

``confine``: the seccomp allow-list that the supervisor built
(supervisor/sandbox/allowlist.py says what it allows, and why) and sent in
the sensor's config, as a classic BPF program. Nothing of libseccomp is
loaded here: the sensor hands the kernel the program, with the prctl a
filter is installed with. no_new_privs, which the drop sets, is what lets an
unprivileged process install a filter. For good: a filter cannot be
removed, only narrowed by another.
"""

from __future__ import annotations

import resource
from collections.abc import Sequence

from tuninetd.common import fprog, worker

PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
# A sensor holds 0, 1, 2, its channel (3) and one or two capture sockets.
MAX_FILES = 16
# Its interpreter maps about 16 MiB.
MAX_ADDRESS_SPACE = 256 << 20
LIMITS = ((resource.RLIMIT_FSIZE, 0), (resource.RLIMIT_NPROC, 0),
          (resource.RLIMIT_NOFILE, MAX_FILES), (resource.RLIMIT_AS, MAX_ADDRESS_SPACE))


def limit() -> None:
    """Soft and hard alike: no way to raise them again."""
    for which, value in LIMITS:
        resource.setrlimit(which, (value, value))


def confine(program: Sequence[Sequence[int]]) -> None:
    prog = fprog.Program(program)  # its buffer must live through the call
    worker.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, prog.fprog)
