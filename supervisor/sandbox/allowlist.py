"""The seccomp allow-list every sensor runs under once it has dropped root,
built here, on the privileged side, and handed to the sensors as a classic
BPF program in their config (sensors/sandbox.py installs it).

What the sensor loop needs, and nothing else: waiting (poll), reading
packets and the supervisor's records (recvfrom, recvmsg: the latter brings
handed-over sockets), sending on the supervisor's socket only (sendto, by
descriptor: every worker's channel is CHANNEL_FD), reading counters and
errors (getsockopt, getsockname), the one option the loop changes
(SO_RCVBUF), the one ioctl the socket module makes (an interface's name from
its index), memory without new executable pages, closing a replaced socket,
its ``ps`` name, stepping aside for the supervisor after a trigger
(sched_yield), and exiting. No socket, bind, connect, execve, ptrace, open,
kill, dup: any other system call kills the whole process with SIGSYS, which
the supervisor logs and answers with a replacement.

libseccomp writes the program, through Debian's binding (python3-seccomp)
or PyPI's pyseccomp (the same API, over ctypes) in a virtual environment, in
a forked child (forked.py): the binding's memory, and pyseccomp's look for
the library (it runs ldconfig), stay out of the supervisor and the sensors.
"""

from __future__ import annotations

import mmap
import os
import socket
import struct
from dataclasses import dataclass

from tuninetd.supervisor import forked
from tuninetd.supervisor.config.settings import Program
from tuninetd.supervisor.errors import StartupError

PR_SET_NAME = 15
SIOCGIFNAME = 0x8910
SOCK_FILTER = struct.Struct("=HBBI")  # struct sock_filter: code, jt, jf, k

# Always allowed, whatever the arguments.
PLAIN = (
    "poll", "ppoll",
    "recvfrom", "recvmsg",
    "getsockopt", "getsockname",
    "close",
    "brk", "munmap", "mremap", "madvise", "futex",
    "clock_gettime", "gettimeofday",
    "rt_sigreturn", "rt_sigprocmask", "restart_syscall",
    "getpid", "sched_yield",
    "exit", "exit_group",
)


@dataclass(frozen=True, slots=True)
class Arg:
    """A condition on one argument: ``value``, or with ``mask`` the bits
    of the mask equal to ``value``."""

    index: int
    value: int
    mask: int | None = None


def narrowed(channel: int) -> dict[str, tuple[Arg, ...]]:
    """Allowed only when every condition on the arguments holds."""
    no_exec = Arg(2, 0, mask=mmap.PROT_EXEC)
    return {
        "sendto": (Arg(0, channel),),
        "setsockopt": (Arg(1, socket.SOL_SOCKET), Arg(2, socket.SO_RCVBUF)),
        "mmap": (no_exec,),
        "mprotect": (no_exec,),
        "prctl": (Arg(0, PR_SET_NAME),),
        # The socket module turns an AF_PACKET address's index into a name.
        "ioctl": (Arg(1, SIOCGIFNAME),),
    }


def build(channel: int) -> Program:
    """The allow-list for sensors whose channel to the supervisor is the
    descriptor ``channel``. Raises StartupError when libseccomp cannot."""
    try:
        insns = forked.answer(lambda: _export(channel), "seccomp builder")
    except forked.Failed as exc:
        raise StartupError(f"cannot build the sensors' seccomp allow-list: {exc} "
                           "(check that libseccomp2 and python3-seccomp are installed)") from None
    return tuple((c, jt, jf, k) for c, jt, jf, k in insns)


def _export(channel: int) -> list[tuple[int, ...]]:
    """In the forked child: libseccomp's program, as (code, jt, jf, k) rows."""
    try:
        import seccomp
    except ImportError:  # a virtual environment: PyPI's binding, same API
        import pyseccomp as seccomp

    rules = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    for name in PLAIN:
        rules.add_rule(seccomp.ALLOW, name)
    for name, args in narrowed(channel).items():
        rules.add_rule(seccomp.ALLOW, name, *(
            seccomp.Arg(a.index, seccomp.EQ, a.value) if a.mask is None
            else seccomp.Arg(a.index, seccomp.MASKED_EQ, a.mask, a.value) for a in args))
    # At most 4096 instructions of 8 bytes: the pipe holds them all.
    rfd, wfd = os.pipe()
    with os.fdopen(rfd, "rb") as r:
        with os.fdopen(wfd, "wb") as w:
            rules.export_bpf(w)
        data = r.read()
    return list(SOCK_FILTER.iter_unpack(data))
