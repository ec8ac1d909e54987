"""A sensor's trigger, checked: the typed facts of the packet that fired.

The sensor decodes the packet (sensors/decode.py) and reports facts, never
text. Each fact is held here to what a packet can hold: a MAC in its one
format, a 12-bit VLAN id, a 16-bit EtherType, an IPv4 or IPv6 address of the
announced version in inet_ntop's form, an 8-bit protocol number, an NFLOG
prefix no longer than the kernel's. The facts must also agree with each
other: no MACs on a raw link, IP only where the EtherType says IP. A fact
that fails is a lie no packet could tell: ``Bad`` says which, and the sensor
link kills the sensor. What passes is safe to word (supervisor/wording.py).
"""

from __future__ import annotations

import re
import socket
from dataclasses import dataclass
from typing import Any

from tuninetd.common import wire

LINKS = ("ether", "raw")
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_ETHERTYPE_OF = {4: 0x0800, 6: 0x86DD}
_FAMILY = {4: socket.AF_INET, 6: socket.AF_INET6}


class Bad(ValueError):
    """A fact no packet could give; the message names it."""


@dataclass(frozen=True, slots=True)
class Ethernet:
    src: str
    dst: str
    ethertype: int
    vid: int | None  # the 802.1Q tag's, when the frame had one


@dataclass(frozen=True, slots=True)
class Network:
    version: int
    src: str
    dst: str
    proto: int


@dataclass(frozen=True, slots=True)
class Facts:
    link: str
    ethernet: Ethernet | None
    network: Network | None
    prefix: str | None  # the NFLOG rule's, as the kernel gave it


def check(msg: dict[str, Any]) -> Facts:
    """The facts of a ``trigger`` message (its fields' types already checked
    by the wire schema), or ``Bad``."""
    link = msg["link"]
    if link not in LINKS:
        raise Bad("link type")
    ethernet = _ethernet(msg)
    network = _network(msg)
    if ethernet is not None and link != "ether":
        raise Bad("MACs on a raw link")
    if ethernet is not None and network is not None \
            and ethernet.ethertype != _ETHERTYPE_OF[network.version]:
        raise Bad("IP behind an EtherType that is not")
    prefix = msg.get("prefix")
    if prefix is not None and not 0 < len(prefix) <= wire.MAX_PREFIX:
        raise Bad("prefix length")
    return Facts(link, ethernet, network, prefix)


def _all_or_none(msg: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Whether the group is there; half a group is a lie."""
    present = [name in msg for name in names]
    if any(present) and not all(present):
        raise Bad(f"{'/'.join(names)} incomplete")
    return all(present)


def _in_range(msg: dict[str, Any], name: str, low: int, high: int) -> int:
    value: int = msg[name]
    if not low <= value <= high:
        raise Bad(name)
    return value


def _ethernet(msg: dict[str, Any]) -> Ethernet | None:
    if not _all_or_none(msg, ("mac_src", "mac_dst", "ethertype")):
        if "vid" in msg:
            raise Bad("VLAN id without MACs")
        return None
    for name in ("mac_src", "mac_dst"):
        if not _MAC.fullmatch(msg[name]):
            raise Bad(name)
    vid = _in_range(msg, "vid", 0, 0x0FFF) if "vid" in msg else None
    return Ethernet(msg["mac_src"], msg["mac_dst"], _in_range(msg, "ethertype", 0, 0xFFFF), vid)


def _network(msg: dict[str, Any]) -> Network | None:
    if not _all_or_none(msg, ("ip", "src", "dst", "proto")):
        return None
    version = msg["ip"]
    if version not in _FAMILY:
        raise Bad("IP version")
    return Network(version, _address(msg["src"], version, "src"),
                   _address(msg["dst"], version, "dst"), _in_range(msg, "proto", 0, 0xFF))


def _address(text: str, version: int, name: str) -> str:
    """The address as inet_ntop writes it (the original's text), which is also
    the only form taken: no scope id, no padding, nothing else."""
    family = _FAMILY[version]
    try:
        canonical = socket.inet_ntop(family, socket.inet_pton(family, text))
    except (OSError, ValueError):  # not an address of that version; a NUL byte
        raise Bad(name) from None
    if canonical != text:
        raise Bad(name)
    return text
