"""Packet filters: libpcap compiles them (through scapy) here, in the
supervisor, so a bad filter is refused before anything starts; the sensors
only attach the bytecode."""

from __future__ import annotations

import re

Program = tuple[tuple[int, int, int, int], ...]

# ARPHRD_* types whose frames start with an Ethernet header on an AF_PACKET
# SOCK_RAW socket; every other type (tun = ARPHRD_NONE, ppp, ipip, wireguard)
# hands us the IP header first.
_ETHERNET_ARPHRD = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK
_DLT = {"ether": 1, "raw": 12}  # DLT_EN10MB, DLT_RAW

# tcp[] in libpcap reaches IPv4 only; for IPv6 without extension headers the
# TCP flags byte sits at 40 + 13.
_ACK = "((ip and tcp[13] & 0x10 != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 0x10 != 0))"


class FilterError(Exception):
    """libpcap refused the expression; the message is libpcap's reason."""


def link_of(ifname: str) -> str | None:
    """"ether" or "raw" for an existing interface, None when there is none."""
    try:
        with open(f"/sys/class/net/{ifname}/type") as f:
            arphrd = int(f.read())
    except (OSError, ValueError):
        return None
    return "ether" if arphrd in _ETHERNET_ARPHRD else "raw"


def ack_expression(flt: str | None) -> str:
    return f"({flt}) and {_ACK}" if flt else _ACK


def compile_filter(expression: str, link: str) -> Program:
    from scapy.arch.common import compile_filter as pcap_compile
    from scapy.error import Scapy_Exception

    try:
        prog = pcap_compile(expression, linktype=_DLT[link])
    except Scapy_Exception as exc:
        found = re.search(r"\((.*)\)\s*$", str(exc))
        raise FilterError(found.group(1) if found else str(exc)) from None
    except ImportError as exc:
        raise FilterError(f"libpcap is not available to compile filters: {exc}") from None
    insns = prog.bf_insns
    # scapy declares k as a signed c_int: constants from 0x80000000 up (IPv4
    # addresses from 128.0.0.0, IPv6 words) come back negative. The kernel's
    # sock_filter.k is a __u32.
    return tuple(
        (insns[i].code, insns[i].jt, insns[i].jf, insns[i].k & 0xFFFFFFFF)
        for i in range(prog.bf_len)
    )
