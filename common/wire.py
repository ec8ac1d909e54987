"""The messages between the supervisor and its workers.

One message per SOCK_SEQPACKET record: a JSON object with a version ``v`` and
a type ``t``. The supervisor treats whatever a worker sends as untrusted:
``parse`` checks size, encoding, version, type and every field's type, and
``clean_text`` makes a string safe to put in a log line.
"""

from __future__ import annotations

import array
import enum
import json
import mmap
import socket

# typing is for the type checker alone: at run time every worker would carry
# it (bench's memory section counts what workers carry).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    Message = dict[str, Any]

VERSION = 1
# A trigger carries up to SNAPLEN packet bytes in base64 plus its typed facts.
SNAPLEN = 65535
MAX_MESSAGE = 128 * 1024
MAX_TEXT = 512
MAX_PREFIX = 128  # NF_LOG_PREFIXLEN: the kernel's bound on an NFLOG prefix


class ProtocolError(Exception):
    """A record that is not a valid message of the expected kind."""


# Field name -> accepted Python types, per message type, per sender role.
# Fields not listed are refused, so a worker cannot smuggle anything through.
_NUM = (int, float)
SENSOR_MESSAGES: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"pid": (int,)},
    "beat": {"n": (int,), "mode": (str,)},
    # The packet's facts, not text: the supervisor checks each one and words
    # the log lines and the commands' TUNINETD_* values itself.
    "trigger": {
        "link": (str,),  # "ether" or "raw"
        "pkt": (str,),  # base64, for -w
        "mac_src": (str,),
        "mac_dst": (str,),
        "vid": (int,),
        "ethertype": (int,),
        "ip": (int,),  # 4 or 6
        "src": (str,),
        "dst": (str,),
        "proto": (int,),
        "prefix": (str,),  # the NFLOG rule's
    },
    "error": {"reason": (str,), "fatal": (bool,)},
}
EXECUTOR_MESSAGES: dict[str, dict[str, tuple[type, ...]]] = {
    "hello": {"pid": (int,)},
    "beat": {"n": (int,), "mode": (str,)},
    "started": {"id": (int,), "pid": (int,)},
    "out": {"id": (int,), "line": (str,)},
    "done": {
        "id": (int,),
        "rc": (int, type(None)),
        "sig": (int, type(None)),
        "dur": _NUM,
        "timeout": (bool,),
        "error": (str, type(None)),
        "killed": (str, type(None)),  # "cgroup" or "marker": how a kill found the processes
    },
    "error": {"reason": (str,), "fatal": (bool,)},
}
# Fields every message of that type must have; others in the table are optional.
REQUIRED: dict[str, frozenset[str]] = {
    "hello": frozenset({"pid"}),
    "beat": frozenset({"n", "mode"}),
    "trigger": frozenset({"link"}),
    "error": frozenset({"reason"}),
    "started": frozenset({"id", "pid"}),
    "out": frozenset({"id", "line"}),
    "done": frozenset({"id", "rc", "sig", "dur", "timeout"}),
}



class Mode(enum.Enum):
    """What a worker is doing. A beat carries the value; status shows it."""

    STARTING = "starting"  # spawned, no hello yet
    ARMED = "armed"  # a sensor: its next matching packet is a trigger
    COUNTING = "counting"  # a sensor: counts matching packets (the state is up)
    LOST = "waiting for interface"  # a pcap sensor whose interface is gone
    IDLE = "idle"  # the executor, between commands
    RUNNING = "running"  # the executor, a command running
    RESTARTING = "restarting"  # exited; its replacement is due


# The modes a beat may carry, per sender.
SENSOR_MODES = frozenset({Mode.ARMED, Mode.COUNTING, Mode.LOST})
EXECUTOR_MODES = frozenset({Mode.IDLE, Mode.RUNNING})

# The order of a sensor's messages, declared the way OpenSSH's monitor declares
# the requests it permits (mon_dispatch): for each phase of a sensor process,
# the messages it may send and the phase each one leads to. Any other message
# breaks the contract, and the sensor is killed. The supervisor's orders move
# the phase too (SENSOR_ORDERS).
#   new: started: hello once ready, or the error that says why it is not.
#   armed: it may send one trigger.
#   rearmed: armed again before its trigger came; that trigger may be on its
#     way, and one more may follow the new arming.
#   fired: its trigger came; no other until it is armed again.
#   ended: it sent an error, which is fatal (it exits): nothing more may come.
SENSOR_PERMITS: dict[str, dict[str, str]] = {
    "new": {"hello": "armed", "error": "ended"},
    "armed": {"beat": "armed", "trigger": "fired", "error": "ended"},
    "rearmed": {"beat": "rearmed", "trigger": "armed", "error": "ended"},
    "fired": {"beat": "fired", "error": "ended"},
    "ended": {},
}
# Order -> phase -> the phase it leads to; ``count`` and ``report`` change none.
SENSOR_ORDERS: dict[str, dict[str, str]] = {
    "arm": {"armed": "rearmed", "rearmed": "rearmed", "fired": "armed"},
}
# Why a message a phase does not permit is refused: "<message> <why>" (a
# hello after the first: "hello again").
_OUT_OF_PLACE = {"new": "before hello", "fired": "while not armed", "ended": "after a fatal error"}


class Contract:
    """One sensor process's place in SENSOR_PERMITS: the one place that
    enforces the order of its messages."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = "new"

    def received(self, kind: str) -> None:
        """Move on with a ``kind`` message; ProtocolError if it is out of place."""
        after = SENSOR_PERMITS[self.phase].get(kind)
        if after is None:
            again = kind == "hello" and self.phase != "ended"
            raise ProtocolError(f"{kind} {'again' if again else _OUT_OF_PLACE[self.phase]}")
        self.phase = after

    def ordered(self, verb: str) -> None:
        self.phase = SENSOR_ORDERS.get(verb, {}).get(self.phase, self.phase)


def mode_of(msg: Message, allowed: frozenset[Mode]) -> Mode:
    """The mode a beat says, if its sender may be in it; else ProtocolError."""
    for mode in allowed:
        if msg["mode"] == mode.value:
            return mode
    said = clean_text(str(msg["mode"]), 40)
    raise ProtocolError(f"beat: mode {said!r} is not one of its sender's")


def encode(kind: str, /, **fields: Any) -> bytes:
    data = json.dumps({"v": VERSION, "t": kind, **fields}, separators=(",", ":")).encode()
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"{kind} message of {len(data)} bytes exceeds {MAX_MESSAGE}")
    return data


def decode(data: bytes) -> Message:
    """Decode a record from a trusted peer (the supervisor)."""
    if not data:
        raise ProtocolError("empty record")
    try:
        msg = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"not JSON: {exc}") from None
    except RecursionError:  # e.g. "[[[[..." nested deeper than the parser goes
        raise ProtocolError("not JSON: nested too deep") from None
    # type(): json's true and 1.0 equal 1 but are not the version.
    if (not isinstance(msg, dict) or type(msg.get("v")) is not int or msg["v"] != VERSION
            or not isinstance(msg.get("t"), str)):
        raise ProtocolError("not a versioned message")
    return msg


def parse(data: bytes, schema: dict[str, dict[str, tuple[type, ...]]]) -> Message:
    """Decode and validate a record from an untrusted worker."""
    if len(data) > MAX_MESSAGE:
        raise ProtocolError(f"record of {len(data)} bytes exceeds {MAX_MESSAGE}")
    msg = decode(data)
    kind = msg["t"]
    fields = schema.get(kind)
    if fields is None:
        raise ProtocolError(f"unknown message type {clean_text(kind)!r}")
    for name, value in msg.items():
        if name in ("v", "t"):
            continue
        allowed = fields.get(name)
        if allowed is None:
            raise ProtocolError(f"{kind}: unexpected field {clean_text(name)!r}")
        # bool is an int subclass; only accept it where bool is listed.
        if isinstance(value, bool) and bool not in allowed:
            raise ProtocolError(f"{kind}: field {name} has the wrong type")
        if not isinstance(value, allowed):
            raise ProtocolError(f"{kind}: field {name} has the wrong type")
        if isinstance(value, str) and len(value) > (SNAPLEN * 2 if name == "pkt" else MAX_TEXT):
            raise ProtocolError(f"{kind}: field {name} is too long")
    missing = REQUIRED.get(kind, frozenset()) - msg.keys()
    if missing:
        raise ProtocolError(f"{kind}: missing {', '.join(sorted(missing))}")
    n = msg.get("n")
    if n is not None and not 0 <= n < 2**63:
        raise ProtocolError(f"{kind}: count out of range")
    return msg


def clean_text(text: str, limit: int = MAX_TEXT) -> str:
    """Printable ASCII only, so nothing a packet or a script says can forge log lines."""
    out = "".join(c if " " <= c <= "~" else "?" for c in text[:limit])
    return out


def send(sock: socket.socket, kind: str, /, **fields: Any) -> None:
    sock.send(encode(kind, **fields))


# Records are received into one buffer per process. A fresh bytes object of
# MAX_MESSAGE + 1 is above malloc's mmap threshold: each receive mapped,
# remapped and unmapped it, on every hop of a start.
# An anonymous mapping's pages count only once a record has reached them.
_INBOX = mmap.mmap(-1, MAX_MESSAGE + 1)


def recv(sock: socket.socket) -> bytes:
    """One record; b"" means the peer has gone. A record longer than MAX_MESSAGE
    comes back as MAX_MESSAGE + 1 bytes, which ``parse`` refuses."""
    return _INBOX[: sock.recv_into(_INBOX)]


def recv_with_fds(sock: socket.socket, most: int) -> tuple[bytes, list[int]]:
    """``recv``, and the descriptors (at most ``most``) that came with the
    record, close-on-exec."""
    fds = array.array("i")
    size, ancillary, _flags, _addr = sock.recvmsg_into(
        [_INBOX], socket.CMSG_SPACE(most * fds.itemsize), socket.MSG_CMSG_CLOEXEC)
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    return _INBOX[:size], list(fds)
