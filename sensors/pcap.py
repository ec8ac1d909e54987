"""The pcap sensor: an AF_PACKET socket with a kernel BPF filter on one interface.

The supervisor compiles the filter with libpcap and sends the bytecode; this
process only attaches it. Armed, the first packet through the filter is read
and decoded. Counting, no packet is read at all: a receive buffer of the
kernel's minimum size makes the kernel drop what the filter accepted, and
PACKET_STATISTICS counts those drops along with the rest, once a beat.
"""

from __future__ import annotations

import ctypes
import errno
import os
import socket
import struct

from tuninetd.common import wire
from tuninetd.sensors import decode, loop

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_AUXDATA = 8
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26  # not exported by the socket module
TP_STATUS_VLAN_VALID = 0x10
TP_STATUS_VLAN_TPID_VALID = 0x40
AUXDATA = struct.Struct("IIIHHHH")
ARMED_RCVBUF = 256 * 1024


class Filter:
    """A classic BPF program in the layout SO_ATTACH_FILTER takes (struct sock_fprog)."""

    def __init__(self, insns: list[list[int]]) -> None:
        code = b"".join(struct.pack("HBBI", c, jt, jf, k) for c, jt, jf, k in insns)
        self._buf = ctypes.create_string_buffer(code, len(code))
        self.fprog = struct.pack("HL", len(insns), ctypes.addressof(self._buf))


class PcapCapture:
    def __init__(self, cfg: wire.Message) -> None:
        self.ifname: str = cfg["name"]
        self.link: str = cfg["link"]
        self.want_packet = bool(cfg["want_packet"])
        self.trigger_filter = Filter(cfg["bpf"])
        self.count_filter = Filter(cfg["bpf_ack"]) if cfg.get("bpf_ack") else self.trigger_filter
        # Protocol 0 receives nothing until bind: the filter is in place before
        # the first packet can be queued.
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setblocking(False)
        self._attach(self.trigger_filter)
        self.sock.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ARMED_RCVBUF)
        self.ifindex = 0
        self._bind()

    def fileno(self) -> int:
        return self.sock.fileno()

    def _attach(self, prog: Filter) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, prog.fprog)

    def _bind(self) -> bool:
        """Bind to the interface by name; binding needs no privilege, so an
        interface that comes back after we dropped root is bound again."""
        try:
            index = socket.if_nametoindex(self.ifname)
            self.sock.bind((self.ifname, ETH_P_ALL))
        except OSError:
            self.ifindex = 0
            return False
        self.ifindex = index
        self._take_stats()
        return True

    def _take_stats(self) -> int:
        # tp_packets already includes tp_drops; reading resets both.
        raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, _drops = struct.unpack("II", raw)
        return int(packets)

    def _drain(self) -> bytes | None:
        """Empty the queue (only a handful of packets fit in the counting
        buffer) and return the newest packet in it."""
        last = None
        while True:
            try:
                last = self.sock.recv(wire.SNAPLEN)
            except OSError:
                return last

    def arm(self) -> loop.Trigger | None:
        self._attach(self.trigger_filter)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ARMED_RCVBUF)
        latest = self._drain()
        if self._take_stats() and latest is not None:
            return self._trigger(latest, None)
        return None

    def read_trigger(self) -> loop.Trigger | None:
        try:
            data, anc, _flags, _addr = self.sock.recvmsg(
                wire.SNAPLEN, socket.CMSG_SPACE(AUXDATA.size)
            )
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self.check()
            return None
        aux = None
        for level, kind, payload in anc:
            if level == SOL_PACKET and kind == PACKET_AUXDATA and len(payload) >= AUXDATA.size:
                aux = AUXDATA.unpack_from(payload)
        return self._trigger(data, aux)

    def _trigger(self, data: bytes, aux: tuple[int, ...] | None) -> loop.Trigger:
        if aux is not None and self.link == "ether" and len(data) >= 14:
            status, _len, _snap, _mac, _net, tci, tpid = aux
            # The kernel strips VLAN tags into metadata; put the tag back so the
            # summary and the -w file show the frame as it was on the wire.
            if status & TP_STATUS_VLAN_VALID:
                if not status & TP_STATUS_VLAN_TPID_VALID:
                    tpid = 0x8100
                data = data[:12] + struct.pack("!HH", tpid, tci) + data[12:]
        summary = decode.summarize(data, self.link)
        return loop.Trigger(
            lines=summary.lines,
            link=self.link,
            packet=data if self.want_packet else None,
            src=summary.src,
            dst=summary.dst,
            proto=summary.proto,
        )

    def count(self) -> None:
        self._attach(self.count_filter)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        self._drain()
        self._take_stats()

    def take_count(self) -> int:
        # Drain first: a packet that arrives between the two calls is counted
        # now and left queued, where ``arm`` knows it was already counted.
        self._drain()
        return self._take_stats()

    def check(self) -> str | None:
        err = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        try:
            index = socket.if_nametoindex(self.ifname)
        except OSError:
            index = 0
        if index and index == self.ifindex and err != errno.ENODEV:
            return None
        if index and self._bind():
            return None
        self.ifindex = 0
        return "waiting for interface"


class AwaitingInterface:
    """The interface did not exist when the daemon started (--wait-for-interface):
    nothing to capture. The supervisor watches for it and replaces this sensor
    with one that has the filter for the link type it turns out to have."""

    def __init__(self) -> None:
        self.idle, self._keep = os.pipe()  # never readable: polled for nothing

    def fileno(self) -> int:
        return self.idle

    def arm(self) -> loop.Trigger | None:
        return None

    def read_trigger(self) -> loop.Trigger | None:
        return None

    def count(self) -> None:
        pass

    def take_count(self) -> int:
        return 0

    def check(self) -> str | None:
        return "waiting for interface"


def open_capture(cfg: wire.Message) -> PcapCapture | AwaitingInterface:
    return AwaitingInterface() if cfg["bpf"] is None else PcapCapture(cfg)


def main() -> None:
    loop.run("pcap", open_capture)


if __name__ == "__main__":
    main()
