"""NFQUEUE messages as the supervisor builds and counts them, and the
kernel's /proc figures as it reads them."""

from __future__ import annotations

import struct

from hypothesis import given
from hypothesis import strategies as st

from tuninetd.common import netlink as nl
from tuninetd.supervisor import nfqueue


def test_bind_request_sets_everything_in_one_message() -> None:
    """Bind, copy mode META, max length, FAIL_OPEN (with its mask), as the
    kernel's uapi lays them out; nlmsghdr in host order, the rest big-endian."""
    msg = nl.nfqueue_config(7, seq=3, cmd=(nl.NFQNL_CFG_CMD_BIND, 0),
                            params=(0, nl.NFQNL_COPY_META), queue_maxlen=256,
                            mask=nl.NFQA_CFG_F_FAIL_OPEN, flags=nl.NFQA_CFG_F_FAIL_OPEN)
    attrs = (struct.pack("=HH", 8, 1) + bytes([1, 0, 0, 0])        # cmd: bind, pf 0
             + struct.pack("=HH", 9, 2) + bytes.fromhex("0000000001") + bytes(3)  # params
             + struct.pack("=HH", 8, 3) + (256).to_bytes(4, "big")  # queue_maxlen
             + struct.pack("=HH", 8, 4) + (1).to_bytes(4, "big")    # mask: fail open
             + struct.pack("=HH", 8, 5) + (1).to_bytes(4, "big"))   # flags: fail open
    body = bytes([0, 0]) + (7).to_bytes(2, "big") + attrs
    assert msg == struct.pack("=IHHII", 16 + len(body), 0x0302, 0x5, 3, 0) + body


def test_batch_verdict_names_the_last_id() -> None:
    msg = nl.nfqueue_verdict_batch(65535, seq=9, verdict=nl.NF_ACCEPT, last_id=0xFFFFFFFE)
    body = (bytes([0, 0, 0xFF, 0xFF]) + struct.pack("=HH", 12, 2)
            + (1).to_bytes(4, "big") + (0xFFFFFFFE).to_bytes(4, "big"))
    assert msg == struct.pack("=IHHII", 16 + len(body), 0x0303, 0x5, 9, 0) + body


def test_packet_messages_are_counted_by_header() -> None:
    packet = nl.build_message(nl.NFQUEUE_PACKET, 0, 0, bytes(40))
    ack = nl.build_message(nl.NLMSG_ERROR, 0, 1, nl.NLMSGERR.pack(0) + bytes(16))
    datagram = packet + ack + packet + packet
    assert nl.count_messages(datagram, len(datagram), nl.NFQUEUE_PACKET) == 3
    # A cut message ends the count, and what came before it still counts.
    assert nl.count_messages(datagram, len(packet) + 10, nl.NFQUEUE_PACKET) == 1


@given(st.binary(max_size=512))
def test_counting_never_fails_on_any_bytes(data: bytes) -> None:
    count = nl.count_messages(data, len(data), nl.NFQUEUE_PACKET)
    assert 0 <= count <= len(data) // nl.NLMSGHDR.size


def test_figures_from_proc() -> None:
    # queue, portid, total, copy mode, copy range, dropped, user dropped, last id, 1
    text = ("    0  31234     0 2 65531     0     0        0  1\n"
            "    7 4294963195     3 1     0     0     0 4294967295  1\n")
    assert nfqueue.figures(text, 7) == nfqueue.Figures(4294963195, 3, 4294967295)
    assert nfqueue.figures(text, 0) == nfqueue.Figures(31234, 0, 0)
    assert nfqueue.figures(text, 70) is None
    assert nfqueue.figures("", 7) is None
