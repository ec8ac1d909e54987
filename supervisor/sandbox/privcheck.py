"""Is a sensor really unprivileged? Read from /proc, trusting nothing it says."""

from __future__ import annotations

from tuninetd.common import procstatus


def privileges_left(pid: int, uid: int, gid: int) -> list[str]:
    """What is still privileged about ``pid``; empty when it dropped everything."""
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
    for cap in ("CapEff", "CapPrm", "CapAmb"):
        if procstatus.capabilities(st, cap) != 0:
            wrong.append(f"{cap} {st.get(cap)}")
    if st.get("NoNewPrivs") != "1":
        wrong.append("NoNewPrivs not set")
    if st.get("Seccomp") != "2":  # 2: a filter, the allow-list
        wrong.append(f"Seccomp {st.get('Seccomp')}")
    return wrong
