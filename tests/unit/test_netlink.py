"""The netlink / NFLOG parser on hostile bytes, its builders, and real messages."""

from __future__ import annotations

import errno
import itertools
import socket
import struct
import sys
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.trigger_text import summarize
from tuninetd.common import netlink as nl
from tuninetd.sensors.nflog import _frame

# Captured from the kernel (x86, so native byte order is little-endian) by
# binding a group as the sensor does. An nft ``log group 7 prefix "tnd"`` rule
# on output, for a UDP packet from 127.0.0.1 to 127.0.0.1:9999:
REAL_OUTPUT = bytes.fromhex(
    "6000000000040000000000000000000002000007080001000800030008000a00746e6400"
    "080005000000000108000b000000000008000e0000000000210009004500001d025b4000"
    "40113a737f0000017f00000196ec270f0009fe1c78000000"
)
# A bridge-family ``vlan id 5 log group 9`` rule on prerouting, for a tagged
# frame 02:00:00:00:01:01 > 02:00:00:00:02:02, 10.201.0.1 > 10.201.0.2 UDP:
# the kernel moved the tag into NFULA_VLAN (a nested attribute).
REAL_BRIDGE_VLAN = bytes.fromhex(
    "d400000000040000000000000000000007000009080001000800000005000a0000000000"
    "080006000000000208000400000000041000080000060000020000000101000006000f00"
    "0001000006001100000e0000120010000200000002020200000001010800000014000300"
    "000000006b084127000000000006bf1708000b000000000008000e000000000014001480"
    "060002000005000006000100810000001200150002000000020202000000010108000000"
    "200009004500001c000100004011653c0ac900010ac900020035270f0008c305"
)
native_little = pytest.mark.skipif(
    sys.byteorder != "little", reason="captured on a little-endian machine"
)


def drain(walk: nl.Records, data: bytes) -> list[tuple[int, int]]:
    """Every record of a walk, failing (not hanging) if it would not end."""
    # Each record takes at least 4 bytes: more than this many means a loop.
    bound = len(data) // 4 + 1
    out = list(itertools.islice(walk, bound + 1))
    assert len(out) <= bound
    return out


def check_records(records: list[tuple[int, int]], start: int, end: int, header: int) -> None:
    prev = start - 1
    for pos, size in records:
        assert prev < pos and pos % 4 == start % 4
        assert header <= size and pos + size <= end
        prev = pos


def parse_everything(data: bytes) -> None:
    """What the sensor does with a datagram, on any bytes; must not raise."""
    messages, _bad = nl.parse_messages(data, len(data))
    walk = nl.messages(data, len(data))
    records = drain(walk, data)
    check_records(records, 0, len(data), nl.NLMSGHDR.size)
    assert len(records) == len(messages)
    for (pos, size), msg in zip(records, messages, strict=True):
        assert len(msg.body) == size - nl.NLMSGHDR.size
        nl.ack_error(msg)
        nl.find_attribute(data, pos + nl.NFLOG_ATTRS_AT, pos + size, nl.NFULA_PAYLOAD)
        packet = nl.parse_packet(data, pos, size)
        if packet is not None:
            _frame(packet)
    list(nl.iter_packets(data, len(data)))


@given(st.binary(max_size=2048))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    parse_everything(data)
    attrs = nl.parse_attributes(data, nl.NFULA)
    assert isinstance(attrs.malformed, bool)
    nl.parse_attributes(data, nl.NFULA_CFG)


@given(st.binary(max_size=512), st.integers(0, 600), st.integers(-8, 600))
def test_attribute_walk_from_any_offset(data: bytes, start: int, end: int) -> None:
    """Misaligned and out-of-range bounds: the walk stays inside the buffer."""
    records = drain(nl.attributes(data, start, end), data)
    check_records(records, start, min(end, len(data)), nl.NLATTR.size)
    nl.parse_attributes(data, nl.NFULA, start, end)
    nl.find_attribute(data, start, end, nl.NFULA_PAYLOAD)


@native_little
@given(st.data())
def test_truncated_real_messages(data: st.DataObject) -> None:
    message = data.draw(st.sampled_from([REAL_OUTPUT, REAL_BRIDGE_VLAN]))
    cut = data.draw(st.integers(0, len(message)))
    parse_everything(message[:cut])
    messages, malformed = nl.parse_messages(message[:cut], cut)
    if cut < struct.unpack_from("=I", message)[0]:
        # Cut inside the message: nothing is made up, and the cut is noticed.
        assert messages == [] and malformed == (cut > 0)


@native_little
@given(st.data())
def test_real_messages_with_a_length_field_overwritten(data: st.DataObject) -> None:
    """Zero, tiny (< header), odd and oversized lengths, in the message header
    or in any attribute header, including the nested ones."""
    message = bytearray(data.draw(st.sampled_from([REAL_OUTPUT, REAL_BRIDGE_VLAN])))
    # Every place a length field can be: 0 (nlmsg_len) and each attribute start.
    attrs = list(nl.attributes(message, nl.NFLOG_ATTRS_AT, len(message)))
    spots = [0] + [pos for pos, _ in attrs] + [pos + 4 for pos, size in attrs if size > 8]
    spot = data.draw(st.sampled_from(spots))
    value = data.draw(st.sampled_from([0, 1, 3, 4, 5, 7, 0xFFFF]) | st.integers(0, 0xFFFF))
    struct.pack_into("=H", message, spot, value)
    parse_everything(bytes(message))


@given(st.lists(st.tuples(st.integers(0, 0xFFFF), st.binary(max_size=40)), max_size=12))
def test_zero_length_and_stray_records_stop_the_walk(records: list[tuple[int, bytes]]) -> None:
    body = b"".join(nl.build_attribute(kind, value) for kind, value in records)
    for bad in (nl.NLATTR.pack(0, 9), nl.NLATTR.pack(3, 9), b"\x01", b"\x01\x02\x03"):
        attrs = nl.parse_attributes(body + bad, nl.NFULA)
        assert attrs.malformed
    zero = nl.NLMSGHDR.pack(0, nl.NFLOG_PACKET, 0, 0, 0)
    assert nl.parse_messages(zero * 3, 48) == ([], True)


def test_attribute_too_short_for_its_type_is_left_out() -> None:
    data = nl.build_attribute(2, b"\x01\x02") + nl.build_attribute(10, b"pfx\0")
    attrs = nl.parse_attributes(data, nl.NFULA)
    assert attrs.malformed
    assert attrs.values == {"prefix": "pfx"}


def test_malformed_nested_attribute_marks_the_outer_one() -> None:
    vlan = nl.build_attribute(2, b"\x00")  # a TCI needs two bytes
    attrs = nl.parse_attributes(nl.build_attribute(20 | 0x8000, vlan), nl.NFULA)
    assert attrs.malformed
    inner = attrs.get_nested("vlan")
    assert inner is not None and inner.values == {}


def test_last_attribute_may_lack_its_padding() -> None:
    data = nl.build_attribute(10, b"ab\0")[:7]
    attrs = nl.parse_attributes(data, nl.NFULA)
    assert attrs.values == {"prefix": "ab"} and not attrs.malformed


cfg_values = st.fixed_dictionaries(
    {},
    optional={
        "cmd": st.integers(0, 255),
        "mode": st.tuples(st.integers(0, 2**32 - 1), st.integers(0, 255)),
        "nlbufsiz": st.integers(0, 2**32 - 1),
        "timeout": st.integers(0, 2**32 - 1),
        "qthresh": st.integers(0, 2**32 - 1),
        "flags": st.integers(0, 0xFFFF),
    },
)


@given(
    st.integers(0, 0xFFFF),
    st.integers(0, 2**32 - 1),
    st.sampled_from([0, socket.AF_INET, socket.AF_BRIDGE, socket.AF_INET6]),
    cfg_values,
)
def test_config_request_round_trip(
    group: int, seq: int, family: int, values: dict[str, Any]
) -> None:
    request = nl.nflog_config(group, seq, family, **values)
    assert len(request) % 4 == 0
    messages, malformed = nl.parse_messages(request, len(request))
    assert not malformed and len(messages) == 1
    msg = messages[0]
    assert msg.kind == nl.NFLOG_CONFIG
    assert msg.flags == nl.NLM_F_REQUEST | nl.NLM_F_ACK
    assert msg.seq == seq
    assert nl.NFGENMSG.unpack_from(msg.body) == (family, nl.NFNETLINK_V0, group)
    attrs = nl.parse_attributes(msg.body, nl.NFULA_CFG, nl.NFGENMSG.size)
    assert not attrs.malformed
    assert attrs.values == values


packet_values = st.fixed_dictionaries(
    {},
    optional={
        "packet_hdr": st.tuples(st.integers(0, 0xFFFF), st.integers(0, 255)),
        "mark": st.integers(0, 2**32 - 1),
        "indev": st.integers(0, 2**32 - 1),
        "hwaddr": st.tuples(st.integers(0, 0xFFFF), st.binary(min_size=8, max_size=8)),
        "payload": st.binary(max_size=300),
        "prefix": st.text(
            st.characters(exclude_characters="\0", codec="utf-8"), max_size=64
        ),
        "hwtype": st.integers(0, 0xFFFF),
        "hwheader": st.binary(max_size=20),
        "hwlen": st.integers(0, 0xFFFF),
        "vlan": st.fixed_dictionaries(
            {}, optional={"proto": st.integers(0, 0xFFFF), "tci": st.integers(0, 0xFFFF)}
        ),
    },
)


@given(st.integers(0, 255), st.integers(0, 0xFFFF), packet_values)
def test_packet_message_round_trip(family: int, group: int, values: dict[str, Any]) -> None:
    body = nl.NFGENMSG.pack(family, 0, group) + nl.build_attributes(values, nl.NFULA)
    message = nl.build_message(nl.NFLOG_PACKET, 0, 0, body)
    # Two in a datagram, as a batch comes: both found, headers only.
    datagram = message * 2
    assert list(nl.iter_packets(datagram, len(datagram))) == [
        (0, len(body) + 16), (len(message), len(body) + 16)
    ]
    packet = nl.parse_packet(datagram, len(message), len(body) + 16)
    assert packet is not None and (packet.family, packet.group) == (family, group)
    decoded = dict(packet.attrs.values)
    if "vlan" in decoded:
        decoded["vlan"] = decoded["vlan"].values
    assert decoded == values
    assert not packet.attrs.malformed
    payload = nl.find_attribute(datagram, nl.NFLOG_ATTRS_AT, len(body) + 16, nl.NFULA_PAYLOAD)
    assert (None if payload is None else bytes(payload)) == values.get("payload")


def test_ack_error() -> None:
    ack = nl.build_message(nl.NLMSG_ERROR, 0, 5, nl.NLMSGERR.pack(-errno.EPERM) + bytes(16))
    (msg,), _ = nl.parse_messages(ack, len(ack))
    assert (msg.seq, nl.ack_error(msg)) == (5, errno.EPERM)
    ok = nl.build_message(nl.NLMSG_ERROR, 0, 6, nl.NLMSGERR.pack(0))
    assert nl.ack_error(nl.parse_messages(ok, len(ok))[0][0]) == 0
    short = nl.build_message(nl.NLMSG_ERROR, 0, 7, b"\x01")
    assert nl.ack_error(nl.parse_messages(short, len(short))[0][0]) is None


@native_little
def test_real_output_message() -> None:
    (pos, size), = nl.iter_packets(REAL_OUTPUT, len(REAL_OUTPUT))
    packet = nl.parse_packet(REAL_OUTPUT, pos, size)
    assert packet is not None and not packet.attrs.malformed
    assert (packet.family, packet.group) == (socket.AF_INET, 7)
    attrs = packet.attrs
    assert attrs.get_str("prefix") == "tnd"
    assert attrs.get_tuple("packet_hdr") == (0x0800, 3)  # NF_INET_LOCAL_OUT
    assert attrs.get_int("outdev") == 1
    assert attrs.get_bytes("hwheader") is None
    frame, link = _frame(packet)
    assert link == "raw" and frame == attrs.get_bytes("payload")
    assert summarize(frame, link).lines == ["|- IPv4 127.0.0.1 > 127.0.0.1, NXT_HDR: 0x11 (UDP)"]


@native_little
def test_real_bridge_message_gets_its_vlan_tag_back() -> None:
    (pos, size), = nl.iter_packets(REAL_BRIDGE_VLAN, len(REAL_BRIDGE_VLAN))
    packet = nl.parse_packet(REAL_BRIDGE_VLAN, pos, size)
    assert packet is not None and not packet.attrs.malformed
    assert (packet.family, packet.group) == (socket.AF_BRIDGE, 9)
    vlan = packet.attrs.get_nested("vlan")
    assert vlan is not None and vlan.values == {"proto": 0x8100, "tci": 5}
    frame, link = _frame(packet)
    assert link == "ether"
    assert summarize(frame, link).lines == [
        "|- IPv4 10.201.0.1 > 10.201.0.2, NXT_HDR: 0x11 (UDP)",
        "|- MAC: 02:00:00:00:01:01 > 02:00:00:00:02:02, 802.1Q VID: 5, EtherType: 0x0800 (IPv4)",
    ]


ETHER_HEADER = bytes.fromhex("020000000202" "020000000101" "0800")
IP_PACKET = bytes.fromhex("4500001c00010000401166c90ac900010ac90002")


def packet_of(family: int, **values: Any) -> nl.Packet:
    body = nl.NFGENMSG.pack(family, 0, 1) + nl.build_attributes(values, nl.NFULA)
    message = nl.build_message(nl.NFLOG_PACKET, 0, 0, body)
    packet = nl.parse_packet(message, 0, len(message))
    assert packet is not None
    return packet


@pytest.mark.parametrize(
    ("family", "values", "expected"),
    [
        # An Ethernet hardware header is used only when all three agree.
        (
            2,
            {"hwtype": 1, "hwlen": 14, "hwheader": ETHER_HEADER},
            (ETHER_HEADER + IP_PACKET, "ether"),
        ),
        (2, {"hwtype": 1, "hwlen": 6, "hwheader": ETHER_HEADER[:6]}, (IP_PACKET, "raw")),
        (2, {"hwtype": 0xFFFE, "hwlen": 14, "hwheader": ETHER_HEADER}, (IP_PACKET, "raw")),
        (10, {}, (IP_PACKET, "raw")),
        # A bridge's full L2 header wins: it keeps an in-band tag.
        (
            7,
            {"l2hdr": ETHER_HEADER[:12] + b"\x81\x00\x00\x03\x08\x00", "hwheader": ETHER_HEADER},
            (ETHER_HEADER[:12] + b"\x81\x00\x00\x03\x08\x00" + IP_PACKET, "ether"),
        ),
        # A bridge logs ARP too: without a link header it is no IP packet.
        (7, {"packet_hdr": (0x0806, 0)}, (b"", "raw")),
        (7, {"packet_hdr": (0x0800, 0)}, (IP_PACKET, "raw")),
    ],
)
def test_frame(family: int, values: dict[str, Any], expected: tuple[bytes, str]) -> None:
    assert _frame(packet_of(family, payload=IP_PACKET, **values)) == expected
