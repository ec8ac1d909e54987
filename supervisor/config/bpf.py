"""Packet filters: libpcap compiles them (through scapy) for the supervisor,
in a forked child (forked.py), so a bad filter is refused before anything
starts; the sensors only attach the bytecode."""

from __future__ import annotations

import re
from collections.abc import Iterable

from tuninetd.supervisor import forked
from tuninetd.supervisor.config.settings import Program

# ARPHRD_* types whose frames start with an Ethernet header on an AF_PACKET
# SOCK_RAW socket; every other type (tun = ARPHRD_NONE, ppp, ipip, wireguard)
# hands us the IP header first.
_ETHERNET_ARPHRD = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK
_DLT = {"ether": 1, "raw": 12}  # DLT_EN10MB, DLT_RAW
LINKS = tuple(_DLT)

# tcp[] in libpcap reaches IPv4 only; for IPv6 without extension headers the
# TCP flags byte sits at 40 + 13.
_ACK = "((ip and tcp[13] & 0x10 != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 0x10 != 0))"


class FilterError(Exception):
    """libpcap refused the expression; the message is libpcap's reason."""


class CompilerError(Exception):
    """The compiler could not run at all (libpcap or scapy missing or broken);
    the message is the reason, one line."""


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


def compile_filters(
    requests: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], Program | FilterError]:
    """Compile (expression, link) pairs in a child process: scapy and libpcap
    weigh some 40 MB that the long-running supervisor should not carry.
    Raises CompilerError when the compiler itself fails."""
    unique = sorted(set(requests))
    if not unique:
        return {}
    try:
        programs = forked.answer(lambda: [_compile(e, link) for e, link in unique], "compiler")
    except forked.Failed as exc:
        raise CompilerError(str(exc)) from None
    results: dict[tuple[str, str], Program | FilterError] = {}
    for key, result in zip(unique, programs, strict=True):
        if isinstance(result, str):
            results[key] = FilterError(result)
        else:
            results[key] = tuple((c, jt, jf, k) for c, jt, jf, k in result)
    return results


def _compile(expression: str, link: str) -> list[list[int]] | str:
    """The program as lists of ints, or libpcap's reason for refusing it.
    An ImportError (no scapy, no libpcap) is the compiler's failure, not the
    expression's: it goes up."""
    from scapy.arch.common import compile_filter as pcap_compile
    from scapy.error import Scapy_Exception

    try:
        prog = pcap_compile(expression, linktype=_DLT[link])
    except Scapy_Exception as exc:
        found = re.search(r"\((.*)\)\s*$", str(exc))
        return found.group(1) if found else str(exc)
    insns = prog.bf_insns
    # scapy declares k as a signed c_int: constants from 0x80000000 up (IPv4
    # addresses from 128.0.0.0, IPv6 words) come back negative. The kernel's
    # sock_filter.k is a __u32.
    return [
        [insns[i].code, insns[i].jt, insns[i].jf, insns[i].k & 0xFFFFFFFF]
        for i in range(prog.bf_len)
    ]
