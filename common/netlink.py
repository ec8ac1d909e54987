"""Netlink, nfnetlink, NFLOG and NFQUEUE messages, with the standard library only.

What the kernel sends is parsed as untrusted bytes: every walk checks each
length against what is left before using it and advances by at least a header
per step, so no input makes it raise or loop. A walk that meets a length that
cannot be right stops there and says so (``malformed``); what came before it is
still returned. Attributes are described by tables (type -> name and codec),
the way pyroute2 declares them, and the same tables build requests.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping

# Sensors import no typing at run time (it is memory each sensor would hold).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

ReadableBuffer = bytes | bytearray | memoryview

NETLINK_NETFILTER = 12

NLMSG_ERROR = 2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4

# nla_type carries two flag bits above the type proper.
NLA_TYPE_MASK = 0x3FFF

NFNETLINK_V0 = 0
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET = 0
NFULNL_MSG_CONFIG = 1
NFLOG_PACKET = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_PACKET
NFLOG_CONFIG = NFNL_SUBSYS_ULOG << 8 | NFULNL_MSG_CONFIG

NFULNL_CFG_CMD_BIND = 1
NFULNL_COPY_PACKET = 2

NFULA_PAYLOAD = 9

NLMSGHDR = struct.Struct("=IHHII")
NLATTR = struct.Struct("=HH")
NFGENMSG = struct.Struct("!BBH")
NLMSGERR = struct.Struct("=i")
_NLMSG_LEN = struct.Struct("=I")
_NLMSG_TYPE = struct.Struct("=H")
_NLA_LEN = struct.Struct("=H")
# Where an NFLOG message's attributes start: after nlmsghdr and nfgenmsg.
NFLOG_ATTRS_AT = NLMSGHDR.size + NFGENMSG.size


def align(n: int) -> int:
    return (n + 3) & ~3


class Records:
    """The (offset, length) of each netlink message or attribute in buf[start:end].

    Messages and attributes share one layout: a length that counts its own
    header, then the record padded to 4 bytes. A length shorter than the header
    or running past ``end`` stops the walk and sets ``malformed``, as do stray
    bytes too short for a header; the padding of the last record may be missing.
    """

    __slots__ = ("_buf", "_end", "_header", "_length", "_pos", "malformed")

    def __init__(
        self, buf: ReadableBuffer, start: int, end: int, length: struct.Struct, header: int
    ) -> None:
        self._buf = buf
        self._pos = max(start, 0)
        self._end = min(end, len(buf))
        self._length = length
        self._header = header
        self.malformed = False

    def __iter__(self) -> Records:
        return self

    def __next__(self) -> tuple[int, int]:
        pos, left, header = self._pos, self._end - self._pos, self._header
        if left < header:
            if left > 0:
                self.malformed = True
                self._pos = self._end
            raise StopIteration
        (size,) = self._length.unpack_from(self._buf, pos)
        if size < header or size > left:
            self.malformed = True
            self._pos = self._end
            raise StopIteration
        self._pos = pos + align(size)
        return pos, size


def messages(buf: ReadableBuffer, size: int) -> Records:
    """The netlink messages in the first ``size`` bytes of a received datagram."""
    return Records(buf, 0, size, _NLMSG_LEN, NLMSGHDR.size)


def attributes(buf: ReadableBuffer, start: int, end: int) -> Records:
    return Records(buf, start, end, _NLA_LEN, NLATTR.size)


def message_type(buf: ReadableBuffer, offset: int) -> int:
    """The type of the message at ``offset``, one that ``messages`` returned."""
    return int(_NLMSG_TYPE.unpack_from(buf, offset + 4)[0])


def find_attribute(buf: ReadableBuffer, start: int, end: int, kind: int) -> memoryview | None:
    """The value of the first attribute of type ``kind``, without decoding the others."""
    for pos, size in attributes(buf, start, end):
        if NLATTR.unpack_from(buf, pos)[1] & NLA_TYPE_MASK == kind:
            return memoryview(buf)[pos + NLATTR.size : pos + size]
    return None


class Field:
    """How one attribute type is named, read and written."""

    __slots__ = ("decode", "encode", "name")

    def __init__(self, name: str, decode: Callable[[bytes], Any],
                 encode: Callable[[Any], bytes]) -> None:
        self.name = name
        self.decode = decode
        self.encode = encode


AttrMap = Mapping[int, Field]


def scalar(name: str, fmt: str) -> Field:
    codec = struct.Struct(fmt)
    return Field(name, lambda data: codec.unpack_from(data)[0], lambda value: codec.pack(value))


def record(name: str, fmt: str) -> Field:
    codec = struct.Struct(fmt)
    return Field(name, codec.unpack_from, lambda value: codec.pack(*value))


def blob(name: str) -> Field:
    return Field(name, bytes, bytes)


def text(name: str) -> Field:
    """A NUL-terminated string; anything after the first NUL is padding."""
    return Field(
        name,
        lambda data: data.split(b"\0", 1)[0].decode("utf-8", "replace"),
        lambda value: value.encode() + b"\0",
    )


def nested(name: str, table: AttrMap) -> Field:
    return Field(
        name,
        lambda data: parse_attributes(data, table),
        lambda value: build_attributes(value, table),
    )


class Attrs:
    """Decoded attributes by name. ``malformed``: some bytes did not parse, or an
    attribute was too short for its type (it is then left out)."""

    __slots__ = ("malformed", "values")

    def __init__(self, values: dict[str, Any] | None = None, malformed: bool = False) -> None:
        self.values: dict[str, Any] = {} if values is None else values
        self.malformed = malformed

    def get_int(self, name: str) -> int | None:
        value = self.values.get(name)
        return value if isinstance(value, int) else None

    def get_bytes(self, name: str) -> bytes | None:
        value = self.values.get(name)
        return value if isinstance(value, bytes) else None

    def get_str(self, name: str) -> str | None:
        value = self.values.get(name)
        return value if isinstance(value, str) else None

    def get_tuple(self, name: str) -> tuple[Any, ...] | None:
        value = self.values.get(name)
        return value if isinstance(value, tuple) else None

    def get_nested(self, name: str) -> Attrs | None:
        value = self.values.get(name)
        return value if isinstance(value, Attrs) else None


def parse_attributes(
    data: ReadableBuffer, table: AttrMap, start: int = 0, end: int | None = None
) -> Attrs:
    """Decode the attributes in data[start:end] that ``table`` knows; unknown
    types are skipped, a repeated type keeps its last value, as the kernel does."""
    out = Attrs()
    walk = attributes(data, start, len(data) if end is None else end)
    for pos, size in walk:
        spec = table.get(NLATTR.unpack_from(data, pos)[1] & NLA_TYPE_MASK)
        if spec is None:
            continue
        try:
            value = spec.decode(bytes(data[pos + NLATTR.size : pos + size]))
        except (struct.error, ValueError):
            out.malformed = True
            continue
        if isinstance(value, Attrs) and value.malformed:
            out.malformed = True
        out.values[spec.name] = value
    out.malformed = out.malformed or walk.malformed
    return out


def build_attribute(kind: int, value: bytes) -> bytes:
    size = NLATTR.size + len(value)
    return NLATTR.pack(size, kind) + value + bytes(align(size) - size)


def build_attributes(values: Mapping[str, Any], table: AttrMap) -> bytes:
    """Attributes in table order; a name the table lacks is a programming error (KeyError)."""
    types = {spec.name: (kind, spec) for kind, spec in table.items()}
    parts = []
    for name, value in values.items():
        kind, spec = types[name]
        parts.append((kind, build_attribute(kind, spec.encode(value))))
    return b"".join(part for _kind, part in sorted(parts, key=lambda p: p[0]))


def build_message(kind: int, flags: int, seq: int, body: bytes, pid: int = 0) -> bytes:
    size = NLMSGHDR.size + len(body)
    return NLMSGHDR.pack(size, kind, flags, seq, pid) + body + bytes(align(size) - size)


class Message:
    __slots__ = ("body", "flags", "kind", "pid", "seq")

    def __init__(self, kind: int, flags: int, seq: int, pid: int, body: bytes) -> None:
        self.kind = kind
        self.flags = flags
        self.seq = seq
        self.pid = pid
        self.body = body


def parse_messages(buf: ReadableBuffer, size: int) -> tuple[list[Message], bool]:
    """Every message in a datagram, and whether some of it did not parse."""
    walk = messages(buf, size)
    out = []
    for pos, length in walk:
        _len, kind, flags, seq, pid = NLMSGHDR.unpack_from(buf, pos)
        out.append(Message(kind, flags, seq, pid, bytes(buf[pos + NLMSGHDR.size : pos + length])))
    return out, walk.malformed


def ack_error(msg: Message) -> int | None:
    """The errno an NLMSG_ERROR message reports (0: success), None if cut short."""
    if len(msg.body) < NLMSGERR.size:
        return None
    return -int(NLMSGERR.unpack_from(msg.body)[0])


# include/uapi/linux/netfilter/nfnetlink_log.h
NFULA_VLAN: AttrMap = {
    1: scalar("proto", "!H"),
    2: scalar("tci", "!H"),
}

NFULA: AttrMap = {
    1: record("packet_hdr", "!HBx"),  # hw_protocol, hook
    2: scalar("mark", "!I"),
    3: record("timestamp", "!QQ"),  # sec, usec
    4: scalar("indev", "!I"),
    5: scalar("outdev", "!I"),
    6: scalar("physindev", "!I"),
    7: scalar("physoutdev", "!I"),
    8: record("hwaddr", "!H2x8s"),  # hw_addrlen, hw_addr
    NFULA_PAYLOAD: blob("payload"),
    10: text("prefix"),
    11: scalar("uid", "!I"),
    12: scalar("seq", "!I"),
    13: scalar("seq_global", "!I"),
    14: scalar("gid", "!I"),
    15: scalar("hwtype", "!H"),
    16: blob("hwheader"),
    17: scalar("hwlen", "!H"),
    18: blob("ct"),
    19: scalar("ct_info", "!I"),
    20: nested("vlan", NFULA_VLAN),
    21: blob("l2hdr"),
}

NFULA_CFG: AttrMap = {
    1: scalar("cmd", "B"),
    2: record("mode", "!IBx"),  # copy_range, copy_mode
    3: scalar("nlbufsiz", "!I"),
    4: scalar("timeout", "!I"),  # hundredths of a second
    5: scalar("qthresh", "!I"),
    6: scalar("flags", "!H"),
}


class Packet:
    """One logged packet: the protocol family the rule saw it in, its group and
    its attributes (see NFULA)."""

    __slots__ = ("attrs", "family", "group")

    def __init__(self, family: int, group: int, attrs: Attrs) -> None:
        self.family = family
        self.group = group
        self.attrs = attrs


def parse_packet(buf: ReadableBuffer, offset: int, length: int) -> Packet | None:
    """Decode the NFLOG packet message at ``offset`` (as ``messages`` returned
    it); None if it is another kind of message or too short for its header."""
    if length < NFLOG_ATTRS_AT or message_type(buf, offset) != NFLOG_PACKET:
        return None
    family, _version, group = NFGENMSG.unpack_from(buf, offset + NLMSGHDR.size)
    attrs = parse_attributes(buf, NFULA, offset + NFLOG_ATTRS_AT, offset + length)
    return Packet(family, group, attrs)


def nflog_config(group: int, seq: int, family: int = 0, **values: Any) -> bytes:
    """An NFULNL_MSG_CONFIG request for ``group`` asking for an ack; ``values``
    are NFULA_CFG attributes by name (cmd=..., mode=(range, mode), ...)."""
    body = NFGENMSG.pack(family, NFNETLINK_V0, group) + build_attributes(values, NFULA_CFG)
    return build_message(NFLOG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def iter_packets(buf: ReadableBuffer, size: int) -> Iterator[tuple[int, int]]:
    """The (offset, length) of the NFLOG packet messages in a datagram; the
    headers alone are read, so this is what counting costs per message."""
    for pos, length in messages(buf, size):
        if length >= NFLOG_ATTRS_AT and message_type(buf, pos) == NFLOG_PACKET:
            yield pos, length


# include/uapi/linux/netfilter/nfnetlink_queue.h
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_PACKET = 0
NFQNL_MSG_CONFIG = 2
NFQNL_MSG_VERDICT_BATCH = 3
NFQUEUE_PACKET = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_PACKET
NFQUEUE_CONFIG = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG
NFQUEUE_VERDICT_BATCH = NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_VERDICT_BATCH

NFQNL_CFG_CMD_BIND = 1
NFQNL_COPY_META = 1
NFQA_CFG_F_FAIL_OPEN = 1
NF_DROP = 0
NF_ACCEPT = 1

NFQA_CFG: AttrMap = {
    1: record("cmd", "!BxH"),  # command, protocol family
    2: record("params", "!IB"),  # copy_range, copy_mode (packed: 5 bytes)
    3: scalar("queue_maxlen", "!I"),
    4: scalar("mask", "!I"),
    5: scalar("flags", "!I"),
}

NFQA: AttrMap = {
    2: record("verdict_hdr", "!II"),  # verdict, packet id
}


def nfqueue_config(queue: int, seq: int, **values: Any) -> bytes:
    """An NFQNL_MSG_CONFIG request for ``queue`` asking for an ack; ``values``
    are NFQA_CFG attributes by name (cmd=(command, pf), queue_maxlen=..., ...)."""
    body = NFGENMSG.pack(0, NFNETLINK_V0, queue) + build_attributes(values, NFQA_CFG)
    return build_message(NFQUEUE_CONFIG, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def nfqueue_verdict_batch(queue: int, seq: int, verdict: int, last_id: int) -> bytes:
    """One verdict for every packet ``queue`` holds up to ``last_id`` (ids wrap:
    the kernel compares them as serial numbers), asking for an ack."""
    body = NFGENMSG.pack(0, NFNETLINK_V0, queue) + build_attributes(
        {"verdict_hdr": (verdict, last_id)}, NFQA)
    return build_message(NFQUEUE_VERDICT_BATCH, NLM_F_REQUEST | NLM_F_ACK, seq, body)


def count_messages(buf: ReadableBuffer, size: int, kind: int) -> int:
    """How many messages of type ``kind`` a datagram holds; headers alone are read."""
    return sum(1 for pos, _length in messages(buf, size) if message_type(buf, pos) == kind)
