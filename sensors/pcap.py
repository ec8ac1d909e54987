"""The pcap sensor: an AF_PACKET socket with a kernel BPF filter on one interface.

The supervisor compiles the filter with libpcap and sends the bytecode; this
process only attaches it, and locks it (SO_LOCK_FILTER): once it runs
unprivileged, not even this process can widen what it sees. Armed, the first
packet through the filter is read and decoded. Counting, no packet is read at
all: a receive buffer of the kernel's minimum size makes the kernel drop what
the filter accepted, and PACKET_STATISTICS counts those drops along with the
rest, once a beat.

A locked filter cannot be swapped, so with a keep-alive filter (--keep-filter,
or -a: count only ACKs) there are two sockets: the trigger one, whose buffer
is at the minimum while counting, and the counting one. The kernel drops a
packet for a full buffer before copying it, so the idle socket costs one
filter run per packet.

A start window (--start-packets) counts on the trigger socket, the same way:
its buffer at the minimum, PACKET_STATISTICS read at each wake-up.

Binding needs no privilege, so the seccomp allow-list (supervisor/
allowlist.py) forbids it: when the interface is deleted, the socket stays
tied to the old one, and the sensor asks the supervisor (its trouble mode,
``wire.Mode.LOST``, in a beat) for fresh sockets, which it hands over the
socketpair.
"""

from __future__ import annotations

import os
import socket
import struct

from tuninetd.common import wire
from tuninetd.common.packet_socket import (
    ARMED_RCVBUF,
    AUXDATA,
    PACKET_AUXDATA,
    PACKET_STATISTICS,
    SOL_PACKET,
    TP_STATUS_VLAN_TPID_VALID,
    TP_STATUS_VLAN_VALID,
    bound_to,
    open_sockets,
)
from tuninetd.sensors import decode, loop


def _take_stats(sock: socket.socket) -> int:
    # tp_packets already includes tp_drops; reading resets both.
    raw = sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
    packets, _drops = struct.unpack("II", raw)
    return int(packets)


def _drain(sock: socket.socket) -> bytes | None:
    """Empty the queue (only a handful of packets fit in the counting
    buffer) and return the newest packet in it."""
    last = None
    while True:
        try:
            last = sock.recv(wire.SNAPLEN)
        except OSError:
            return last


class PcapCapture:
    def __init__(self, cfg: wire.Message) -> None:
        self.ifname: str = cfg["name"]
        self.link: str = cfg["link"]
        self.want_packet = bool(cfg["want_packet"])
        self._use(open_sockets(cfg))

    def _use(self, socks: list[socket.socket]) -> None:
        self.socks = socks
        self.trigger_sock, self.count_sock = socks[0], socks[-1]
        self.woken_by = self.trigger_sock
        self.unread = 0  # the trigger socket's statistics hold the trigger read
        for sock in socks:
            _take_stats(sock)

    def adopt(self, fds: list[int]) -> None:
        """Sockets the supervisor opened (``open_sockets``, so nonblocking
        already) replace ours."""
        for sock in self.socks:
            sock.close()
        self._use([socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0, fileno=fd) for fd in fds])

    def fileno(self) -> int:
        return self.woken_by.fileno()

    def arm(self) -> loop.FirstPacket | None:
        sock = self.woken_by = self.trigger_sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ARMED_RCVBUF)
        latest = _drain(sock)
        self.unread = 0
        if _take_stats(sock) and latest is not None:
            return self._trigger(latest, None)
        return None

    def read_trigger(self) -> loop.FirstPacket | None:
        try:
            data, anc, _flags, _addr = self.trigger_sock.recvmsg(
                wire.SNAPLEN, socket.CMSG_SPACE(AUXDATA.size)
            )
        except OSError:
            return None  # nothing after all, or an error: check() looks at it
        self.unread = 1
        aux = None
        for level, kind, payload in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= AUXDATA.size:
                aux = AUXDATA.unpack_from(payload)
        return self._trigger(data, aux)

    def _trigger(self, data: bytes, aux: tuple[int, ...] | None) -> loop.FirstPacket:
        if aux is not None and self.link == "ether" and len(data) >= 14:
            status, _len, _snap, _mac, _net, tci, tpid = aux
            # The kernel strips VLAN tags into metadata; put the tag back so the
            # summary and the -w file show the frame as it was on the wire.
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        return loop.FirstPacket(self.link, decode.describe(data, self.link),
                            data if self.want_packet else None)

    def count(self) -> None:
        self.woken_by = self.count_sock
        for sock in self.socks:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
            _drain(sock)
            _take_stats(sock)

    def gather(self) -> int:
        sock = self.trigger_sock
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        _drain(sock)
        n, self.unread = max(0, _take_stats(sock) - self.unread), 0
        return n

    def take_count(self) -> int:
        # Drain first: a packet that arrives between the two calls is counted
        # now and left queued, where ``arm`` knows it was already counted.
        # The trigger socket is reset too, so that ``arm`` fires only on
        # packets that came after this report.
        counts = []
        for sock in self.socks:
            _drain(sock)
            counts.append(_take_stats(sock))
        return counts[-1]

    def check(self) -> wire.Mode | None:
        for sock in self.socks:
            # Reading SO_ERROR clears it (ENETDOWN while the interface is down:
            # the kernel hooks the socket in again when it comes up).
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if all(bound_to(sock) == self.ifname for sock in self.socks):
            return None
        return wire.Mode.LOST


class AwaitingInterface:
    """The interface did not exist when the daemon started (--wait-for-interface):
    nothing to capture. The supervisor watches for it and replaces this sensor
    with one that has the filter for the link type it turns out to have."""

    def __init__(self) -> None:
        self.idle, self._keep = os.pipe()  # never readable: polled for nothing

    def fileno(self) -> int:
        return self.idle

    def arm(self) -> loop.FirstPacket | None:
        return None

    def read_trigger(self) -> loop.FirstPacket | None:
        return None

    def count(self) -> None:
        pass

    def take_count(self) -> int:
        return 0

    def gather(self) -> int:
        return 0

    def check(self) -> wire.Mode | None:
        return wire.Mode.LOST

    def adopt(self, fds: list[int]) -> None:
        for fd in fds:  # not asked for: the supervisor replaces this sensor instead
            os.close(fd)


def open_capture(cfg: wire.Message) -> PcapCapture | AwaitingInterface:
    return AwaitingInterface() if cfg["bpf"] is None else PcapCapture(cfg)


def main() -> None:
    loop.run("pcap", open_capture)


if __name__ == "__main__":
    main()
