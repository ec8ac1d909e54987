"""The trigger-packet decoder: the summary lines the original daemon logged.

It runs in the unprivileged sensor on packets anyone can send, so it uses only
the stdlib, reads fixed offsets after explicit length checks, and never raises
on any packet bytes. The line formats are the original C daemon's, byte for
byte, because users' scripts grep them.
"""

from __future__ import annotations

import socket
from typing import NamedTuple

PROTOCOLS: dict[int, str] = {
    1: "ICMP",
    2: "IGMP",
    3: "GGP",
    4: "IP-in-IP",
    6: "TCP",
    17: "UDP",
    41: "IPv6",
    43: "IPv6-Route",
    44: "IPv6-Frag",
    47: "GRE",
    50: "ESP",
    52: "I-NLSP",
    55: "MOBILE",
    56: "TLSP",
    58: "IPv6-ICMP",
    59: "IPv6-NoNxt",
    60: "IPv6-Opts",
    66: "RVD",
    88: "EIGRP",
    89: "OSPF",
    97: "ETHERIP",
    98: "ENCAP",
    108: "IPComp",
    111: "IPX-in-IP",
    115: "L2TP",
    124: "IS-IS-over-IPv4",
    129: "IPLT",
    132: "SCTP",
    136: "UDPLite",
    137: "MPLS-in-IP",
    143: "Ethernet",
}

ETHERTYPES: dict[int, str] = {
    0x0800: "IPv4",
    0x0806: "ARP",
    0x0842: "Wake-on-LAN",
    0x8035: "RARP",
    0x809B: "AppleTalk",
    0x80F3: "AppleTalk ARP",
    0x8100: "802.1Q",
    0x8137: "IPX",
    0x86DD: "IPv6",
    0x8808: "Ethernet-Flowcontrol",
    0x8847: "MPLS-unicast",
    0x8848: "MPLS-multicast",
    0x8863: "PPPoE-Discovery",
    0x8864: "PPPoE-Session",
    0x88BF: "MikroTik-RoMON",
    0x88CC: "LLDP",
}

UNRESOLVED = "unresolved"
NOT_IP_LINE = "|- Not IPv4/6 protocol, L3 info not available"

_ETH_P_IP = 0x0800
_ETH_P_IPV6 = 0x86DD
_ETH_P_8021Q = 0x8100
_ETH_HLEN = 14
_VLAN_HLEN = 4

_IPPROTO_TCP = 6
# IPv6 extension headers that share the (next header, length in 8-octet units
# minus one) layout, so tcp_ack can step over them without knowing them.
_IPV6_GENERIC_EXT = frozenset((0, 43, 60))
# Bounds the walk so a chain of bogus headers costs a fixed amount of work.
_MAX_IPV6_EXT = 8
_TCP_ACK = 0x10


class Summary(NamedTuple):
    """What the sensor reports about a trigger packet."""

    lines: list[str]
    src: str | None
    dst: str | None
    proto: str | None


def summarize(data: bytes, link: str) -> Summary:
    """Decode a trigger packet into the original's log lines.

    ``link`` is ``"ether"`` (an Ethernet frame, maybe with one 802.1Q tag) or
    ``"raw"`` (starts at the IP header: tun devices, NFLOG payloads); any other
    value is a programming error and raises ValueError. A frame too short for
    its Ethernet header gets no MAC line; one cut inside the 802.1Q tag is
    reported with the outer EtherType 0x8100.
    """
    if link == "raw":
        return _ip_summary(data, 0, None, [])
    if link != "ether":
        raise ValueError(f"unknown link type {link!r}")
    if len(data) < _ETH_HLEN:
        return _ip_summary(data, 0, 0, [])

    macs = f"{data[6:12].hex(':')} > {data[0:6].hex(':')}"
    ethertype = int.from_bytes(data[12:14], "big")
    offset = _ETH_HLEN
    if ethertype == _ETH_P_8021Q and len(data) >= _ETH_HLEN + _VLAN_HLEN:
        vid = int.from_bytes(data[14:16], "big") & 0x0FFF
        ethertype = int.from_bytes(data[16:18], "big")
        offset += _VLAN_HLEN
        mac_line = f"|- MAC: {macs}, 802.1Q VID: {vid}, EtherType: {_ethertype_text(ethertype)}"
    else:
        mac_line = f"|- MAC: {macs}, EtherType: {_ethertype_text(ethertype)}"

    # The IP header is looked for only where the EtherType says one is.
    expect = 4 if ethertype == _ETH_P_IP else 6 if ethertype == _ETH_P_IPV6 else 0
    return _ip_summary(data, offset, expect, [mac_line])


def tcp_ack(ip: bytes) -> bool:
    """Whether a raw IPv4/IPv6 packet is TCP with the ACK flag set.

    Called for every packet while counting with ``-a``, hence plain indexing
    and no allocation. IPv6 hop-by-hop, routing and destination-options headers
    are stepped over (at most eight); a fragment header, like a non-first IPv4
    fragment, means no TCP header can be trusted here, so the answer is False.
    """
    n = len(ip)
    if n < 20:
        return False
    version = ip[0] >> 4
    if version == 4:
        offset = (ip[0] & 0x0F) * 4
        if ip[9] != _IPPROTO_TCP or offset < 20 or ip[6] & 0x1F or ip[7]:
            return False
    elif version == 6:
        next_header = ip[6]
        offset = 40
        for _ in range(_MAX_IPV6_EXT):
            if next_header not in _IPV6_GENERIC_EXT:
                break
            if n < offset + 2:
                return False
            next_header = ip[offset]
            offset += (ip[offset + 1] + 1) * 8
        if next_header != _IPPROTO_TCP:
            return False
    else:
        return False
    return n > offset + 13 and bool(ip[offset + 13] & _TCP_ACK)


def _ip_summary(data: bytes, offset: int, expect: int | None, after: list[str]) -> Summary:
    """Prepend the IP line (or the not-IP line) to ``after``.

    ``expect`` is the IP version the link layer announced, None to take the
    version nibble's word for it (raw links), 0 when the link says "not IP".
    """
    n = len(data) - offset
    version = data[offset] >> 4 if n > 0 else 0
    if expect is not None and version != expect:
        version = 0
    if version == 4:
        ihl = (data[offset] & 0x0F) * 4
        # The header checksum is deliberately not verified (the original did):
        # outgoing packets seen by NFLOG or pcap often carry a checksum left
        # for the NIC to fill in, and they are exactly the ones we wait for.
        if ihl < 20 or n < ihl:
            return Summary([NOT_IP_LINE, *after], None, None, None)
        family = socket.AF_INET
        proto = data[offset + 9]
        src_at, dst_at, addr_len = offset + 12, offset + 16, 4
    elif version == 6 and n >= 40:
        family = socket.AF_INET6
        # The fixed header's next header, as the original: no extension walk.
        proto = data[offset + 6]
        src_at, dst_at, addr_len = offset + 8, offset + 24, 16
    else:
        return Summary([NOT_IP_LINE, *after], None, None, None)

    src = socket.inet_ntop(family, data[src_at : src_at + addr_len])
    dst = socket.inet_ntop(family, data[dst_at : dst_at + addr_len])
    name = PROTOCOLS.get(proto, UNRESOLVED)
    line = f"|- IPv{version} {src} > {dst}, NXT_HDR: 0x{proto:02X} ({name})"
    return Summary([line, *after], src, dst, name)


def _ethertype_text(ethertype: int) -> str:
    return f"0x{ethertype:04X} ({ETHERTYPES.get(ethertype, UNRESOLVED)})"
