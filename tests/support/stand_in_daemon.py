"""A stand-in for a daemon's control socket: it answers status requests with
a record the test chose, for clients tested without a daemon."""

from __future__ import annotations

import json
import socket
import threading
from pathlib import Path
from typing import Any


def answer(path: Path, record: dict[str, Any], times: int) -> threading.Thread:
    """A stand-in daemon on ``path`` that answers ``times`` status requests with ``record``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(times)

    def serve() -> None:
        with server:
            for _ in range(times):
                conn, _ = server.accept()
                with conn:
                    conn.makefile("rb").readline()
                    conn.sendall(json.dumps(record).encode() + b"\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread
