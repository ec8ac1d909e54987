"""Packet filters: libpcap compiles them for the supervisor, in a forked
child (forked.py), so a bad filter is refused, with libpcap's own reason,
before anything starts; the sensors only attach the bytecode.

libpcap is called through ctypes, as tcpdump calls it: a dead handle for the
link type, pcap_compile, and pcap_geterr for the reason it refuses an
expression. scapy's wrapper around the same calls drops that reason in some
versions (2.5, Debian bookworm's, says only -1)."""

from __future__ import annotations

import ctypes
from collections.abc import Iterable

from tuninetd.supervisor import forked
from tuninetd.supervisor.config.settings import Program

# ARPHRD_* types whose frames start with an Ethernet header on an AF_PACKET
# SOCK_RAW socket; every other type (tun = ARPHRD_NONE, ppp, ipip, wireguard)
# hands us the IP header first.
_ETHERNET_ARPHRD = {1, 772}  # ARPHRD_ETHER, ARPHRD_LOOPBACK
_DLT = {"ether": 1, "raw": 12}  # DLT_EN10MB, DLT_RAW
LINKS = tuple(_DLT)
# Debian's libpcap0.8, then the soname other distributions use.
_LIBPCAP = ("libpcap.so.0.8", "libpcap.so.1")
_SNAPLEN = 0xFFFF  # the program accepts a packet whole, up to this many bytes
_NETMASK_UNKNOWN = 0xFFFFFFFF  # PCAP_NETMASK_UNKNOWN: "ip broadcast" is refused

# tcp[] in libpcap reaches IPv4 only; for IPv6 without extension headers the
# TCP flags byte sits at 40 + 13.
_ACK = "((ip and tcp[13] & 0x10 != 0) or (ip6 and ip6[6] == 6 and ip6[53] & 0x10 != 0))"


class FilterError(Exception):
    """libpcap refused the expression; the message is libpcap's reason."""


class CompilerError(Exception):
    """The compiler could not run at all (libpcap missing or broken); the
    message is the reason, one line."""


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


def keep_expression(keep_filter: str | None, flt: str | None, ack_only: bool) -> str | None:
    """What keeps a pcap sensor's state up, compiled to its second socket:
    --keep-filter, or -a's ACK test of the filter; None: the filter itself."""
    if keep_filter is not None:
        return keep_filter
    return ack_expression(flt) if ack_only else None


def compile_filters(
    requests: Iterable[tuple[str, str]],
) -> dict[tuple[str, str], Program | FilterError]:
    """Compile (expression, link) pairs in a child process: the long-running
    supervisor never carries libpcap and ctypes.
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


class _Insn(ctypes.Structure):
    _fields_ = (("code", ctypes.c_ushort), ("jt", ctypes.c_ubyte), ("jf", ctypes.c_ubyte),
                ("k", ctypes.c_uint32))


class _Program(ctypes.Structure):
    _fields_ = (("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(_Insn)))


def _libpcap() -> ctypes.CDLL:
    """libpcap, its functions typed; OSError (no libpcap) goes up."""
    reasons = []
    for name in _LIBPCAP:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as exc:
            reasons.append(str(exc))
    else:
        raise OSError(f"libpcap not found ({'; '.join(reasons)})")
    lib.pcap_open_dead.restype = ctypes.c_void_p
    lib.pcap_open_dead.argtypes = (ctypes.c_int, ctypes.c_int)
    lib.pcap_compile.restype = ctypes.c_int
    lib.pcap_compile.argtypes = (ctypes.c_void_p, ctypes.POINTER(_Program), ctypes.c_char_p,
                                 ctypes.c_int, ctypes.c_uint32)
    lib.pcap_geterr.restype = ctypes.c_char_p
    lib.pcap_geterr.argtypes = (ctypes.c_void_p,)
    lib.pcap_freecode.restype = None
    lib.pcap_freecode.argtypes = (ctypes.POINTER(_Program),)
    lib.pcap_close.restype = None
    lib.pcap_close.argtypes = (ctypes.c_void_p,)
    return lib


def _compile(expression: str, link: str) -> list[list[int]] | str:
    """The program as lists of ints (optimised, as tcpdump compiles it), or
    libpcap's reason for refusing it. A missing libpcap is the compiler's
    failure, not the expression's: it goes up."""
    lib = _libpcap()
    handle = lib.pcap_open_dead(_DLT[link], _SNAPLEN)
    if not handle:
        raise OSError("pcap_open_dead failed (out of memory)")
    prog = _Program()
    try:
        if lib.pcap_compile(handle, ctypes.byref(prog), expression.encode(), 1,
                            _NETMASK_UNKNOWN) != 0:
            return (lib.pcap_geterr(handle) or b"refused, no reason given").decode(
                errors="replace")
        try:
            return [[prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf,
                     prog.bf_insns[i].k] for i in range(prog.bf_len)]
        finally:
            lib.pcap_freecode(ctypes.byref(prog))
    finally:
        lib.pcap_close(handle)
