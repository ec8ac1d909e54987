"""Runs a command under what three of the systemd units' settings do, built
as systemd builds them, with libseccomp, then execs it (``python
unit_restrictions.py ARGV...``):

- RestrictNamespaces=yes: unshare and clone with any namespace flag, and
  setns, fail with EPERM; clone3 with ENOSYS, so that the C library falls
  back to clone;
- RestrictSUIDSGID=yes: chmod, fchmod and fchmodat setting the set-user-ID
  or set-group-ID bit fail with EPERM;
- SystemCallArchitectures=native: a system call of another ABI kills.

As systemd does for a service that starts as root, no_new_privs stays off.
"""

from __future__ import annotations

import errno
import os
import stat
import sys

try:
    import seccomp
except ImportError:  # a virtual environment: PyPI's binding, same API
    import pyseccomp as seccomp

NAMESPACE_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000,
                   0x40000000)  # mount, cgroup, uts, ipc, user, pid, net


def main() -> None:
    rules = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    rules.set_attr(seccomp.Attr.CTL_NNP, 0)
    rules.set_attr(seccomp.Attr.ACT_BADARCH, seccomp.KILL_PROCESS)
    refuse = seccomp.ERRNO(errno.EPERM)
    for flag in NAMESPACE_FLAGS:
        for call in ("unshare", "clone"):
            rules.add_rule(refuse, call, seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    rules.add_rule(refuse, "setns")
    rules.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    for bit in (stat.S_ISUID, stat.S_ISGID):
        for call, mode_arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
            rules.add_rule(refuse, call, seccomp.Arg(mode_arg, seccomp.MASKED_EQ, bit, bit))
    rules.load()
    os.execvp(sys.argv[1], sys.argv[1:])


if __name__ == "__main__":
    main()
