"""Whether the kernel will run a command, checked before the first packet
needs it: an ELF executable, or a script whose ``#!`` interpreter exists
and can be run; with --exec-user, as that user (every folder on the way
entered, the file executed, a script read by its interpreter).

Without this, a script with no ``#!`` line (``Exec format error``), one saved
with Windows line endings (its interpreter is ``/bin/sh\\r``, which does not
exist) or one the exec user cannot reach fails only when traffic comes.
"""

from __future__ import annotations

import os

from tuninetd.supervisor import forked
from tuninetd.supervisor.config.settings import Account

# What the kernel reads of a file to decide how to run it (BINPRM_BUF_SIZE),
# and how many interpreters deep it follows a #! line (BINPRM_MAX_RECURSION).
HEAD = 256
MAX_DEPTH = 4


def problem(path: str, user: Account | None) -> str | None:
    """Why ``path`` (absolute, a regular file) cannot be run, in words; None:
    it can. With ``user``, as that user, when we are root (who else could
    switch to it); otherwise as ourselves."""
    if user is None or os.geteuid() != 0 or user.uid == 0:
        return _problem(path, None)
    try:
        found: str | None = forked.answer(lambda: _as(user, path), "command check")
    except forked.Failed as exc:
        return f"cannot check it as {user.name}: {exc}"
    return found


def _as(user: Account, path: str) -> str | None:
    """In a forked child: become ``user`` as the executor does, then look."""
    os.initgroups(user.name, user.gid)
    os.setresgid(user.gid, user.gid, user.gid)
    os.setresuid(user.uid, user.uid, user.uid)
    return _problem(path, user.name)


def _problem(path: str, user: str | None, depth: int = 0) -> str | None:
    if not os.access(path, os.X_OK):
        if user is None:
            return "it is not executable"
        return (f"{user} cannot execute it (permission denied: the file's mode, or a folder "
                "on its path that it cannot enter)")
    try:
        with open(path, "rb") as f:
            head = f.read(HEAD)
    except PermissionError:
        # Execute-only: an ELF executable runs so, a script would not (its
        # interpreter must read it); which it is, this user cannot tell.
        return None
    except OSError as exc:
        return f"cannot read it: {exc.strerror}"
    if head.startswith(b"\x7fELF"):
        return None
    if not head.startswith(b"#!"):
        return ("neither an ELF executable nor a script starting with #!: the kernel cannot "
                "run it (Exec format error); add a #! line, e.g. #!/bin/sh")
    interpreter = _interpreter(head)
    if not interpreter:
        return "its #! line names no interpreter"
    shown = repr(interpreter)
    crlf = (" (the file has Windows line endings, CRLF: convert it, e.g. with dos2unix)"
            if interpreter.endswith("\r") else "")
    if not os.path.exists(interpreter):
        return f"its #! line names the interpreter {shown}, which does not exist{crlf}"
    if depth + 1 >= MAX_DEPTH:
        return f"its #! line names the interpreter {shown}, a script too many levels deep"
    inner = _problem(interpreter, user, depth + 1)
    if inner is not None:
        return f"its #! line names the interpreter {shown}, and {inner}{crlf}"
    return None


def _interpreter(head: bytes) -> str:
    """The interpreter of a ``#!`` line, as the kernel splits it: after the
    #! and any blanks, up to the next space, tab or newline (a CR is part of
    the name)."""
    line = head[2:].split(b"\n", 1)[0].lstrip(b" \t")
    name = line.replace(b"\t", b" ").split(b" ", 1)[0]
    return os.fsdecode(name)
