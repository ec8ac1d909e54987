"""The trigger-packet decoder: the typed facts of the first matching packet.

It runs in the unprivileged sensor on packets anyone can send, so it uses only
the stdlib, reads fixed offsets after explicit length checks, and never raises
on any packet bytes. It says what the packet holds (MACs, VLAN id, EtherType,
IP version, addresses, protocol number) and never words it: the supervisor
checks each fact and writes the original's log lines itself
(supervisor/wording.py), so a sensor can lie about a packet, not write text.
"""

from __future__ import annotations

import socket

# What a trigger reports: the ``trigger`` message's fields (common/wire.py).
Facts = dict[str, int | str]

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


def describe(data: bytes, link: str) -> Facts:
    """The facts of a trigger packet, as far as its bytes go.

    ``link`` is ``"ether"`` (an Ethernet frame, maybe with one 802.1Q tag) or
    ``"raw"`` (starts at the IP header: tun devices, NFLOG payloads); any other
    value is a programming error and raises ValueError. A frame too short for
    its Ethernet header has no MACs; one cut inside the 802.1Q tag is
    reported with the outer EtherType 0x8100 and no VLAN id.
    """
    if link == "raw":
        return _ip_facts(data, 0, None)
    if link != "ether":
        raise ValueError(f"unknown link type {link!r}")
    if len(data) < _ETH_HLEN:
        return {}

    facts: Facts = {"mac_src": data[6:12].hex(":"), "mac_dst": data[0:6].hex(":")}
    ethertype = int.from_bytes(data[12:14], "big")
    offset = _ETH_HLEN
    if ethertype == _ETH_P_8021Q and len(data) >= _ETH_HLEN + _VLAN_HLEN:
        facts["vid"] = int.from_bytes(data[14:16], "big") & 0x0FFF
        ethertype = int.from_bytes(data[16:18], "big")
        offset += _VLAN_HLEN
    facts["ethertype"] = ethertype
    # The IP header is looked for only where the EtherType says one is.
    expect = 4 if ethertype == _ETH_P_IP else 6 if ethertype == _ETH_P_IPV6 else 0
    return {**facts, **_ip_facts(data, offset, expect)}


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


def _ip_facts(data: bytes, offset: int, expect: int | None) -> Facts:
    """The IP version, addresses and protocol; none when it is not IP.

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
            return {}
        family = socket.AF_INET
        proto = data[offset + 9]
        src_at, dst_at, addr_len = offset + 12, offset + 16, 4
    elif version == 6 and n >= 40:
        family = socket.AF_INET6
        # The fixed header's next header, as the original: no extension walk.
        proto = data[offset + 6]
        src_at, dst_at, addr_len = offset + 8, offset + 24, 16
    else:
        return {}
    return {
        "ip": version,
        "src": socket.inet_ntop(family, data[src_at : src_at + addr_len]),
        "dst": socket.inet_ntop(family, data[dst_at : dst_at + addr_len]),
        "proto": proto,
    }
