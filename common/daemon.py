"""Going into the background: fork, new session, fork again."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import NoReturn


def detach(answer: Callable[[str], NoReturn]) -> int:
    """In the daemon, returns the write end of a pipe; its cwd is / and its
    standard streams are /dev/null. The original process reads that pipe to
    its end and passes what the daemon wrote (empty: it died first) to
    ``answer``, which exits."""
    rfd, wfd = os.pipe()
    if child := os.fork():
        os.close(wfd)
        os.waitpid(child, 0)  # the first child exits as soon as it has forked
        with os.fdopen(rfd, "rb") as r:
            answer(r.read().decode(errors="replace"))
    os.close(rfd)
    os.setsid()
    if os.fork():
        os._exit(0)
    os.chdir("/")
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    os.close(null)
    return wfd
