"""Receiving records (common/wire.py) over a real SOCK_SEQPACKET pair: each
record whole and alone, though every receive of a process shares one buffer;
an oversized one cut to MAX_MESSAGE + 1 bytes, which ``parse`` refuses; and
descriptors handed over with a record."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tuninetd.common import wire


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    yield ours, theirs
    ours.close()
    theirs.close()


@settings(max_examples=60)
@given(st.lists(st.binary(min_size=1, max_size=9000), min_size=1, max_size=6))
def test_each_record_comes_back_whole_and_alone(
        pair: tuple[socket.socket, socket.socket], records: list[bytes]) -> None:
    """Longer records first or last: nothing of one shows in the next."""
    ours, theirs = pair
    for record in records:
        theirs.send(record)
    assert [wire.recv(ours) for _ in records] == records


def test_an_oversized_record_is_cut_one_byte_past_the_limit(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    theirs.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * wire.MAX_MESSAGE)
    theirs.send(b"{" + b" " * (wire.MAX_MESSAGE + 100))
    data = wire.recv(ours)
    assert len(data) == wire.MAX_MESSAGE + 1
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        wire.parse(data, wire.SENSOR_MESSAGES)
    theirs.send(b"next")
    assert wire.recv(ours) == b"next"


def test_descriptors_come_with_their_record_close_on_exec(
        pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    r, w = os.pipe()
    try:
        socket.send_fds(theirs, [wire.encode("sockets")], [r, w])
        data, fds = wire.recv_with_fds(ours, 2)
        assert wire.decode(data)["t"] == "sockets" and len(fds) == 2
        assert not any(os.get_inheritable(fd) for fd in fds)
        os.write(fds[1], b"through")  # the same pipe, by the handed-over ends
        assert os.read(r, 16) == b"through"
        for fd in fds:
            os.close(fd)
        theirs.send(b"plain")
        assert wire.recv_with_fds(ours, 2) == (b"plain", [])
    finally:
        os.close(r)
        os.close(w)
