"""The seccomp allow-list every sensor runs under once it has dropped root.

What the loop needs, and nothing else: waiting (poll), reading packets and
the supervisor's records (recvfrom, recvmsg: the latter brings handed-over
sockets), sending on the supervisor's socket only (sendto, by descriptor),
reading counters and errors (getsockopt, getsockname), the one option the
loop changes (SO_RCVBUF), the one ioctl the socket module makes (an
interface's name from its index), memory without new executable pages,
closing a replaced socket, its ``ps`` name, stepping aside for the supervisor
after a trigger (sched_yield), and exiting. No socket, bind, connect,
execve, ptrace, open, kill, dup: any other system call kills the whole
process with SIGSYS, which the supervisor logs and answers with a
replacement.

libseccomp through Debian's binding (python3-seccomp), or PyPI's pyseccomp
(the same API, over ctypes) in a virtual environment; the module is imported
while still root, since pyseccomp looks for the library on the file system.
"""

from __future__ import annotations

import mmap
import socket

try:
    import seccomp
except ImportError:  # a virtual environment: PyPI's binding, same API
    import pyseccomp as seccomp

__all__ = ["confine", "seccomp"]

PR_SET_NAME = 15
SIOCGIFNAME = 0x8910

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


def confine(channel: int) -> None:
    """Install the allow-list for this process; ``channel`` is the only
    descriptor it may send on. For good: a filter cannot be removed."""
    rules = seccomp.SyscallFilter(defaction=seccomp.KILL_PROCESS)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    for name in PLAIN:
        rules.add_rule(seccomp.ALLOW, name)
    rules.add_rule(seccomp.ALLOW, "sendto", seccomp.Arg(0, seccomp.EQ, channel))
    rules.add_rule(
        seccomp.ALLOW,
        "setsockopt",
        seccomp.Arg(1, seccomp.EQ, socket.SOL_SOCKET),
        seccomp.Arg(2, seccomp.EQ, socket.SO_RCVBUF),
    )
    no_exec = seccomp.Arg(2, seccomp.MASKED_EQ, mmap.PROT_EXEC, 0)
    rules.add_rule(seccomp.ALLOW, "mmap", no_exec)
    rules.add_rule(seccomp.ALLOW, "mprotect", no_exec)
    rules.add_rule(seccomp.ALLOW, "prctl", seccomp.Arg(0, seccomp.EQ, PR_SET_NAME))
    # The socket module turns an AF_PACKET address's index into a name.
    rules.add_rule(seccomp.ALLOW, "ioctl", seccomp.Arg(1, seccomp.EQ, SIOCGIFNAME))
    rules.load()
