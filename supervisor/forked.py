"""A job for a short-lived forked child: what it imports (libpcap
for the packet filters, libseccomp for the sensors' allow-list) dies with
it, and the long-running supervisor never carries that memory. The answer
comes back as JSON over a pipe."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, NoReturn

_MAX_REASON = 300  # characters of a failure's reason


class Failed(Exception):
    """The job raised (the message is its reason, one line), or the child
    ended without an answer (the message says how)."""


def answer(job: Callable[[], Any], name: str) -> Any:
    """What ``job`` returns, computed in a forked child; ``name`` says which
    process failed in the message of ``Failed``."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(rfd)
        _reply(job, wfd)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    try:
        reply = json.loads(data) if status == 0 else None
    except ValueError:
        reply = None
    if not isinstance(reply, dict):
        if os.WIFSIGNALED(status):
            ended = f"was killed by signal {os.WTERMSIG(status)}"
        else:
            ended = f"exited with status {os.waitstatus_to_exitcode(status)} and no answer"
        raise Failed(f"the {name} process {ended}")
    if "error" in reply:
        raise Failed(str(reply["error"]))
    return reply["answer"]


def _reply(job: Callable[[], Any], wfd: int) -> NoReturn:
    """``{"answer": ...}``, or ``{"error": reason}``: one line, bounded, so
    the parent can refuse with the reason instead of a traceback."""
    try:
        reply: dict[str, object] = {"answer": job()}
    except BaseException as exc:  # whatever it is, the parent reports it
        text = " ".join(str(exc).split()) or type(exc).__name__
        reply = {"error": text[:_MAX_REASON]}
    try:
        with os.fdopen(wfd, "wb") as w:
            w.write(json.dumps(reply).encode())
    except BaseException:  # the parent sees the status
        os._exit(1)
    os._exit(0)
