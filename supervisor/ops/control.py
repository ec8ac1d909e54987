"""The control socket: where ``tuninetd status`` asks the daemon how it is,
and ``tuninetd up`` / ``tuninetd down`` tell it what to do.

A unix stream socket, mode 0600 and owned by the daemon's user (root): the
file mode is the access control, and the peer's uid is checked once more on
accept. The request is one line of JSON, ``{"cmd": "status"}`` (or ``up``,
``down``); the reply is one line of JSON, then the daemon closes the
connection. A verb's reply is ``{"name", "pid", "changed", "result"}``:
whether it did anything, and what, in words.

A second daemon on the same path finds the first one answering and stops
with an error (exit 1); a socket left behind by a daemon that died (nobody
accepts: ECONNREFUSED) is replaced.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import selectors
import socket
import stat
import struct
from collections.abc import Callable
from typing import Any

from tuninetd.common.logs import log
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import Observer
from tuninetd.supervisor.ops.serve import Server

MAX_REQUEST = 1024
PROBE_TIMEOUT = 1.0


def encode(record: dict[str, Any]) -> bytes:
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def in_use(path: str) -> bool:
    """True when a daemon answers on ``path``; False for a stale socket."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(PROBE_TIMEOUT)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError as exc:
        if exc.errno == errno.EAGAIN:  # its backlog is full: it is alive and busy
            return True
        raise
    finally:
        probe.close()
    return True


def bind(path: str) -> tuple[socket.socket, tuple[int, int]]:
    """Listen on ``path``; returns the socket and the file's identity (st_dev,
    st_ino), so that only our own socket file is removed at exit."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    # Born 0600: bind gives the file the socket's mode under the umask, so
    # there is no moment where others may connect, and no chmod by path
    # afterwards, which would follow whatever was swapped in at the path.
    os.fchmod(sock.fileno(), 0o600)
    old_umask = os.umask(0o177)
    try:
        try:
            sock.bind(path)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                raise
            st = os.lstat(path)
            if not stat.S_ISSOCK(st.st_mode):
                raise StartupError(f"control socket {path}: exists and is not a socket") from None
            if in_use(path):
                raise StartupError(
                    f"control socket {path} is in use: another tuninetd is running there "
                    f"(tuninetd status --control {path}); give this one its own --control"
                ) from None
            os.unlink(path)  # left behind by a daemon that is gone
            sock.bind(path)
        sock.listen(16)
        st = os.lstat(path)
    except OSError as exc:
        sock.close()
        raise StartupError(f"control socket {path}: {exc.strerror or exc}") from None
    except StartupError:
        sock.close()
        raise
    finally:
        os.umask(old_umask)
    return sock, (st.st_dev, st.st_ino)


def unlink(path: str, ident: tuple[int, int]) -> None:
    """Remove the socket file if it is still ours."""
    with contextlib.suppress(OSError):
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ident:
            os.unlink(path)


# A verb: does it, and says whether anything changed and what happened.
Verb = Callable[[], tuple[bool, str]]


class ControlServer(Observer):
    """Answers status requests, and runs the operator's verbs: like signals,
    orders from outside, run in the loop's own thread between two passes."""

    def __init__(self, path: str, name: str, selector: selectors.BaseSelector,
                 status: Callable[[], dict[str, Any]], verbs: dict[str, Verb]) -> None:
        self.path = path
        self.name = name
        self.status = status
        self.verbs = verbs
        sock, self.ident = bind(path)
        self.server = Server(
            sock,
            selector,
            self._answer,
            max_request=MAX_REQUEST,
            too_long=encode({"error": "request too long"}),
            admit=self._admit,
            timeout=2.0,
        )

    def _admit(self, conn: socket.socket) -> bytes | None:
        try:
            uid = peer_uid(conn)
        except OSError:
            uid = -1
        if uid not in (0, os.geteuid()):
            return encode({"error": "permission denied"})
        return None

    def _answer(self, request: bytes) -> bytes | None:
        line, newline, _ = request.partition(b"\n")
        if not newline:
            return None
        try:
            msg = json.loads(line)
        except (ValueError, UnicodeDecodeError):
            msg = None
        cmd = msg.get("cmd") if isinstance(msg, dict) else None
        if not isinstance(cmd, str) or (cmd != "status" and cmd not in self.verbs):
            known = ", ".join(["status", *self.verbs])
            return encode({"error": f"unknown request: expected {{\"cmd\": ...}} with one of "
                                    f"{known}"})
        try:
            if cmd == "status":
                return encode(self.status())
            changed, result = self.verbs[cmd]()
            return encode({"name": self.name, "pid": os.getpid(), "changed": changed,
                           "result": result})
        except Exception as exc:  # a bug here must not take the daemon down
            # ... nor go unseen: the client's screen is not the daemon's log.
            failed = f"{cmd} failed: {type(exc).__name__}: {exc}"
            log.error("CORE: %s over the control socket", failed)
            return encode({"error": failed})

    def deadline(self) -> float | None:
        return self.server.deadline()

    def tick(self, now: float) -> None:
        self.server.expire(now)

    def close(self) -> None:
        self.server.close()
        unlink(self.path, self.ident)
