"""The empty directory sensors chroot into before dropping privileges."""

from __future__ import annotations

import os
import stat

from tuninetd.supervisor.instance import RUN_DIR

JAIL = os.path.join(RUN_DIR, "empty")


def _fit(path: str) -> bool:
    """Root's, not writable by anyone else, not a link, and empty."""
    try:
        st = os.lstat(path)
        return (
            stat.S_ISDIR(st.st_mode)
            and st.st_uid == 0
            and not st.st_mode & 0o022
            and not os.listdir(path)
        )
    except OSError:
        return False


def empty_dir() -> str:
    """JAIL, made if need be; a fresh temporary one when JAIL cannot be used
    (no /run, or someone put something there)."""
    try:
        os.makedirs(JAIL, mode=0o755, exist_ok=True)
        os.chmod(JAIL, 0o555)
    except OSError:
        pass
    if _fit(JAIL):
        return JAIL
    import tempfile  # the rare way: tempfile brings random and shutil

    path = tempfile.mkdtemp(prefix="tuninetd-empty-")
    os.chmod(path, 0o555)
    return path
