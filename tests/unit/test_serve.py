"""The control socket's server on the test's clock: a client that says
nothing neither stalls one that asks nor outlives its deadline."""

from __future__ import annotations

import select
import selectors
import socket
from pathlib import Path

from tuninetd.supervisor.ops.serve import Server


def answer(request: bytes) -> bytes | None:
    return b"pong\n" if request.endswith(b"\n") else None


def turn(selector: selectors.BaseSelector) -> None:
    """One pass of the daemon's loop over the server's sockets, not waiting."""
    for key, events in selector.select(0):
        key.data(events)


def test_a_silent_client_stalls_no_one_and_is_dropped_at_its_deadline(tmp_path: Path) -> None:
    selector = selectors.DefaultSelector()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(tmp_path / "ctl.sock"))
    listener.listen(8)
    server = Server(listener, selector, answer, max_request=64, too_long=b"long\n", timeout=2.0)
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    silent.connect(str(tmp_path / "ctl.sock"))
    turn(selector)
    [held] = server.clients
    asker = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    asker.connect(str(tmp_path / "ctl.sock"))
    asker.sendall(b"ping\n")
    turn(selector)  # accepted
    turn(selector)  # read, answered, closed
    asker.settimeout(0)
    assert asker.recv(16) == b"pong\n"
    assert server.clients == {held}
    assert not select.select([silent], [], [], 0)[0], "the silent client was dropped first"
    deadline = server.deadline()
    assert deadline == held.deadline
    server.expire(deadline - 1e-6)
    assert server.clients == {held}
    server.expire(deadline)
    assert server.clients == set()
    silent.settimeout(0)
    assert silent.recv(16) == b""
    for s in (silent, asker):
        s.close()
    server.close()
