"""Who besides root can change a path: the check, after OpenSSH's StrictModes
and sudo's, for what root runs or reads (-c, start_command, stop_command,
--config) and for the folders root makes files in (-w, --control).

A path is safe when no one but the trusted owners (root, and for commands
the --exec-user, who runs them anyway) can change what it names:

- every directory on it, as given and as resolved (a symlink on the way is
  only as safe as the directory it sits in), is owned by a trusted owner
  and has no group or other write bit; a directory with the sticky bit that
  root owns (/tmp) is let through where ``sticky_ok`` says so, since there
  others cannot rename or delete what is not theirs;
- the file itself (when it is checked) is owned by a trusted owner and has
  no group or other write bit.

Group write counts as others' write whatever the group: its members are not
known to be trusted.
"""

from __future__ import annotations

import os
import pwd
import stat

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def name_of(uid: int) -> str:
    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _problem(what: str, path: str, st: os.stat_result, owners: frozenset[int],
             sticky_ok: bool) -> str | None:
    if st.st_uid not in owners:
        return f"{what} {path} is owned by {name_of(st.st_uid)}"
    if st.st_mode & _OTHERS_WRITE:
        if sticky_ok and st.st_mode & stat.S_ISVTX and st.st_uid == 0:
            return None
        who = " and ".join(w for bit, w in ((stat.S_IWGRP, "its group"),
                                            (stat.S_IWOTH, "others")) if st.st_mode & bit)
        return f"{what} {path} is writable by {who} (mode {stat.S_IMODE(st.st_mode):04o})"
    return None


def _ancestors(folder: str) -> list[str]:
    """``folder`` and every directory above it, up to /."""
    found = [folder]
    while folder != os.path.dirname(folder):
        folder = os.path.dirname(folder)
        found.append(folder)
    return found


def folders_problem(folder: str, owners: frozenset[int], *, sticky_parent_ok: bool) -> str | None:
    """What lets someone else change ``folder``'s entries, or None. ``folder``
    is absolute; it is the parent of the file in question, which may be
    sticky only if ``sticky_parent_ok``; the directories above it may be."""
    parent = os.stat(folder)
    seen: set[tuple[int, int]] = set()
    for path in _ancestors(folder) + _ancestors(os.path.realpath(folder)):
        st = os.stat(path)
        if (st.st_dev, st.st_ino) in seen:
            continue
        seen.add((st.st_dev, st.st_ino))
        is_parent = (st.st_dev, st.st_ino) == (parent.st_dev, parent.st_ino)
        problem = _problem("directory", path, st, owners, sticky_parent_ok or not is_parent)
        if problem:
            return problem
    return None


def file_problem(path: str, owners: frozenset[int]) -> str | None:
    """What lets someone else change the file at ``path`` (absolute; a
    symlink is followed) or a directory on its way, or None."""
    problem = _problem("file", path, os.stat(path), owners, sticky_ok=False)
    for folder in (os.path.dirname(path), os.path.dirname(os.path.realpath(path))):
        problem = problem or folders_problem(folder, owners, sticky_parent_ok=True)
    return problem


ROOT_ONLY = frozenset({0})


def root_folder_problem(path: str) -> str | None:
    """What lets someone else than root change the entries of ``path``'s
    folder, for a file root makes there (-w, --control): the folder itself
    may not be sticky, since others could still take a name in it first."""
    return folders_problem(os.path.dirname(path), ROOT_ONLY, sticky_parent_ok=False)
