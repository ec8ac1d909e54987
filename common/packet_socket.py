"""AF_PACKET sockets as a pcap sensor captures on them: opened as root by
the supervisor (when an interface comes back) as by the sensor at its start,
each with its filter attached and locked before its first packet."""

from __future__ import annotations

import contextlib
import socket
import struct

from tuninetd.common import fprog, wire

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26  # not exported by the socket module
SO_LOCK_FILTER = 44
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("IIIHHHH")
ARMED_RCVBUF = 256 * 1024


def open_sockets(cfg: wire.Message) -> list[socket.socket]:
    """As root: the trigger socket, then the keep-alive one if any, each with
    its filter attached and locked, bound to the interface if it exists
    (``bound_to`` tells). Nonblocking, with the armed buffer size."""
    programs = [cfg["bpf"]] + ([cfg["bpf_keep"]] if cfg.get("bpf_keep") else [])
    socks = []
    try:
        for insns in programs:
            # Protocol 0 receives nothing until bind: the filter is in place
            # before the first packet can be queued.
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            socks.append(sock)
            sock.setblocking(False)
            prog = fprog.Program(insns)  # its buffer must live through the call
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog.fprog)
            sock.setsockopt(socket.SOL_SOCKET, SO_LOCK_FILTER, 1)
            sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ARMED_RCVBUF)
            # No such interface (yet): bound_to says "".
            with contextlib.suppress(OSError):
                sock.bind((cfg["name"], ETH_P_ALL))
    except OSError:
        for sock in socks:
            sock.close()
        raise
    return socks


def bound_to(sock: socket.socket) -> str:
    """The name of the interface ``sock`` is bound to; "" when none (never
    bound, or the interface was deleted: the kernel forgets its index)."""
    try:
        name: str = sock.getsockname()[0]
    except OSError:
        return ""
    return name
