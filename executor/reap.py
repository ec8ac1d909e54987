"""What the executor does every turn without psutil: reap orphans.

psutil is loaded only when a run has to be killed (``tree``): an executor that
never kills anything stays small.
"""

from __future__ import annotations

import os


def reap_orphans(running_pid: int | None) -> None:
    """Collect the exit status of adopted orphans so no zombies pile up.

    The status of the running command belongs to its ``Run``: each child is
    peeked at (WNOWAIT) before being reaped, and the command is left alone;
    once its run has reaped it, the next call goes on with the others.
    """
    while True:
        try:
            info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            return
        if info is None or info.si_pid == running_pid:
            return
        os.waitid(os.P_PID, info.si_pid, os.WEXITED | os.WNOHANG)
