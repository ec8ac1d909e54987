"""Is a sensor really unprivileged? Read from /proc, trusting nothing it says."""

from __future__ import annotations

import os

from tuninetd.common import procstatus

# /proc/PID/status says "Seccomp: 3" (the kernel's SECCOMP_MODE_DEAD) once a
# filter has decided to kill the process: it made a call the allow-list
# refuses, and is on its way out.
SECCOMP_KILLING = "3"


def seccomp_killing(pid: int) -> bool:
    try:
        return procstatus.read(pid).get("Seccomp") == SECCOMP_KILLING
    except OSError:
        return False


def privileges_left(pid: int, uid: int, gid: int, jail: str | None = None) -> list[str]:
    """What is still privileged about ``pid``; empty when it dropped everything.
    With ``jail``, its root must be that directory (where this process may
    look: with CAP_SYS_PTRACE)."""
    try:
        st = procstatus.read(pid)
    except OSError as exc:
        return [f"cannot inspect it ({exc})"]
    wrong = []
    # Real, effective, saved and file-system ids, all four.
    if st.get("Uid", "").split() != [str(uid)] * 4:
        wrong.append(f"uids {st.get('Uid')}")
    if st.get("Gid", "").split() != [str(gid)] * 4:
        wrong.append(f"gids {st.get('Gid')}")
    if st.get("Groups"):
        wrong.append(f"groups {st['Groups']}")
    for cap in ("CapEff", "CapPrm", "CapAmb", "CapBnd"):
        if procstatus.capabilities(st, cap) != 0:
            wrong.append(f"{cap} {st.get(cap)}")
    if st.get("NoNewPrivs") != "1":
        wrong.append("NoNewPrivs not set")
    if st.get("Seccomp") != "2":  # 2: a filter, the allow-list
        wrong.append(f"Seccomp {st.get('Seccomp')}")
    if jail is not None and (problem := _root_problem(pid, jail)):
        wrong.append(problem)
    return wrong


def _root_problem(pid: int, jail: str) -> str | None:
    try:
        root, expected = os.stat(f"/proc/{pid}/root"), os.stat(jail)
    except PermissionError:
        # Another user's root is seen with CAP_SYS_PTRACE, which the systemd
        # units do not give: not a sign of privilege, and not checkable.
        return None
    except OSError as exc:
        return f"cannot see its root ({exc.strerror or exc})"
    if (root.st_dev, root.st_ino) != (expected.st_dev, expected.st_ino):
        try:
            where = os.readlink(f"/proc/{pid}/root")
        except OSError:
            where = "elsewhere"
        return f"root {where}, not {jail}"
    return None
