"""The nflog sensor: one netfilter NFLOG group, read over netlink with the stdlib.

The rule that logs to the group is the filter. The kernel accepts NFLOG
configuration only from a sender holding CAP_NET_ADMIN, so the group is bound
and configured once, as root, in one request, and that configuration serves
both modes:

- copy range: enough of each packet for the summary and for ``tcp_ack``
  (the whole packet with -w), so any message can be a trigger;
- flushing: each message is sent to us at once (queue threshold 1), so a
  trigger is not held back until the next timer tick; with -a, where every
  message is read while counting, they come in batches of about BATCH_BYTES
  instead, one ``recv`` per batch, at the price of up to a tick of latency.

Armed, the loop polls the socket and the first message fires. Counting, the
loop never wakes for messages. Without -a the receive buffer shrinks to the
kernel's minimum, as the pcap sensor's does, and nothing is read while
packets go by: the kernel queues the first message or two and drops the
rest, and the socket's own counters (SO_MEMINFO: the bytes queued, the
messages dropped) say whether a message came since the last beat, since
only a read lowers the one and nothing lowers the other. The first quiet
beat empties the queue, so that the next message wakes the loop (it listens
while quiet) and that ``arm`` fires on a message that came after the last
beat, not one left from before. With -a, ``take_count`` drains a large
buffer once a beat and looks at each payload's TCP flags; a drop there is
not activity (nothing says the lost messages were ACKs).

With --keep-group, what keeps the state up while up is another group: the
sensor binds it on a second socket (``Group``) and counts that one while
up, its own group's queue emptied each beat so that ``arm`` fires only on
what came after; a sensor whose keep group another sensor binds counts
nothing. A start window (--start-packets) counts the trigger group as
counting does, and reads the message or two the minimal buffer holds.
"""

from __future__ import annotations

import errno
import os
import socket
import struct
from collections.abc import Iterator

from tuninetd.common import netlink, procstatus, wire
from tuninetd.sensors import decode, loop

# IP and TCP headers with options fit; so do IPv6 and a few extension headers.
SUMMARY_COPY = 128
BATCH_BYTES = 64 * 1024
# One message per datagram: the kernel grows the buffer for a larger packet.
SINGLE_BYTES = 4096
ARMED_RCVBUF = 256 * 1024
# High enough that the batch's size, not the message count, closes a batch.
BATCH_MESSAGES = 4096
RCVBUF = 4 * 1024 * 1024
# The kernel rounds a batch's allocation (BATCH_BYTES, or one message with a
# whole 64 KiB packet, plus overhead) up to 128 KiB and fills all of it: a
# datagram stays below that. A datagram cut short would only lose its last
# message (the walk stops there), never be misread.
RECV_BUFFER = 256 * 1024
ACK_TIMEOUT = 2.0

SO_RCVBUFFORCE = 33  # not in the socket module
SO_MEMINFO = 55  # neither
# The socket's memory figures (include/uapi/linux/sock_diag.h): nine counters,
# the bytes queued first and the messages dropped for a full queue last.
MEMINFO = struct.Struct("9I")
COUNTER = 1 << 32  # the drop counter wraps
ARPHRD_ETHER = 1
ETH_HLEN = 14
ETH_P_IP = 0x0800
ETH_P_IPV6 = 0x86DD
CAP_NET_ADMIN = 12
NO_NFLOG = "no NFLOG support in this kernel (nfnetlink_log)"
NO_MEMINFO = "this kernel does not report a socket's drops (SO_MEMINFO)"


class Backlog:
    """What the kernel says of the receive queue. Without a read, neither
    figure goes down: any message that comes raises one of them."""

    __slots__ = ("dropped", "queued")

    def __init__(self, queued: int, dropped: int) -> None:
        self.queued = queued  # bytes, as the kernel accounts them
        self.dropped = dropped  # messages, since the socket was made (modulo COUNTER)


def arrived(since: Backlog, now: Backlog) -> int:
    """Messages between two looks with no read in between: each drop, and at
    least one for the queue's growth (its bytes do not say how many)."""
    return (now.dropped - since.dropped) % COUNTER + (now.queued > since.queued)


def backlog(sock: socket.socket) -> Backlog:
    raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, MEMINFO.size)
    if len(raw) < MEMINFO.size:
        raise OSError(errno.ENOPROTOOPT, NO_MEMINFO)
    figures = MEMINFO.unpack(raw)
    return Backlog(figures[0], figures[-1])


class Group:
    """One NFLOG group, bound and configured (as root) on a netlink socket of
    its own. ``reads``: every message is read while counting (-a: batched,
    a large buffer); otherwise counting shrinks the buffer and reads nothing."""

    def __init__(self, group: int, copy_range: int, reads: bool, buf: bytearray) -> None:
        self.group = group
        self.reads = reads
        self.buf = buf  # shared: one datagram is handled before the next is read
        # At the last beat (or the switch to counting), when it does not read.
        self.last = Backlog(0, 0)
        # A packet message that came in with the bind acknowledgement; the
        # first ``arm`` fires on it.
        self.early: bytes | None = None
        try:
            self.sock = socket.socket(
                socket.AF_NETLINK, socket.SOCK_RAW, netlink.NETLINK_NETFILTER
            )
        except OSError as exc:
            if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
                raise OSError(exc.errno, NO_NFLOG) from None
            raise
        try:
            self.sock.bind((0, 0))
            self._bind(copy_range)
            # Forced: the default rmem_max would cap a plain SO_RCVBUF far below this.
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            # A drain reads at most what the buffer can hold, so a group that
            # fills it faster than we read cannot keep us from beating.
            self.budget = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)
            self.sock.setblocking(False)
            backlog(self.sock)  # counting needs it: a kernel without it fails here, as root
        except OSError:
            self.sock.close()
            raise

    def _bind(self, copy_range: int) -> None:
        """Bind and configure in one request, so no message is ever sent to us
        with the kernel's defaults (whole packets, one-second flush).

        No PF_BIND: the NFLOG target and nftables' ``log group`` name this
        backend themselves, and binding it to a family would also divert that
        family's default logging (e.g. conntrack's) for the whole namespace.
        """
        self.sock.send(
            netlink.nflog_config(
                self.group,
                seq=1,
                cmd=netlink.NFULNL_CFG_CMD_BIND,
                mode=(copy_range, netlink.NFULNL_COPY_PACKET),
                # With -a every message is read while counting, so batch them;
                # otherwise flush each one at once: the trigger is not held
                # back until the next timer tick.
                nlbufsiz=BATCH_BYTES if self.reads else SINGLE_BYTES,
                qthresh=BATCH_MESSAGES if self.reads else 1,
                timeout=0,
            )
        )
        err = self._wait_ack(seq=1)
        if err == 0:
            return
        if err in (errno.EPERM, errno.EBUSY):
            # The kernel says EPERM both to a sender without CAP_NET_ADMIN and
            # to one that is not the group's current listener.
            if procstatus.has_capability(CAP_NET_ADMIN):
                reason = f"nflog group {self.group} is already bound by another process"
            else:
                reason = f"no permission to bind nflog group {self.group} (needs CAP_NET_ADMIN)"
        elif err in (errno.EINVAL, errno.EOPNOTSUPP):
            # What nfnetlink answers for a subsystem it does not have.
            reason = NO_NFLOG
        else:
            reason = f"cannot bind nflog group {self.group}: {os.strerror(err)}"
        raise OSError(err, reason)

    def _wait_ack(self, seq: int) -> int:
        self.sock.settimeout(ACK_TIMEOUT)
        while True:
            try:
                size = self.sock.recv_into(self.buf)
            except TimeoutError:
                raise OSError(errno.ETIMEDOUT, "the kernel did not answer the nflog bind") from None
            replies, _malformed = netlink.parse_messages(self.buf, size)
            for msg in replies:
                if msg.kind == netlink.NLMSG_ERROR and msg.seq == seq:
                    err = netlink.ack_error(msg)
                    return errno.EPROTO if err is None else err
            self.early = self.newest_packet(size) or self.early

    def receive(self) -> Iterator[int]:
        """Read what is queued, one datagram at a time, into ``self.buf``: the
        caller handles each datagram before the next overwrites it. Stops when
        the queue is empty or the budget is spent."""
        budget = self.budget
        while budget > 0:
            try:
                size = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    return
                continue  # reported once per overflow; what is still queued follows
            budget -= max(size, 1)
            yield size

    def drain(self) -> None:
        """Empty the queue (within the budget), reading nothing of it."""
        for _size in self.receive():
            pass

    def newest_packet(self, size: int) -> bytes | None:
        newest = None
        for pos, length in netlink.iter_packets(self.buf, size):
            newest = pos, length
        if newest is None:
            return None
        pos, length = newest
        return bytes(self.buf[pos : pos + length])

    def arm(self) -> bytes | None:
        """Back to the armed buffer: the newest message that came since the
        last count, if any. With -a the last count read them all; without,
        what was queued at the last beat was counted then, and is the
        trigger only if nothing came after it. When what came since was
        dropped, the next message fires."""
        fresh = True
        if not self.reads:
            now = backlog(self.sock)
            fresh = self.last.queued == 0 or now.queued > self.last.queued
            # Back from the counting minimum (as far as rmem_max lets an
            # unprivileged process go: enough for one message at a time).
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, ARMED_RCVBUF)
        newest, self.early = self.early, None
        for size in self.receive():
            if fresh:
                newest = self.newest_packet(size) or newest
        # What a start window counts is from here on.
        self.last = Backlog(0, backlog(self.sock).dropped)
        return newest

    def count(self) -> None:
        if not self.reads:
            # Like the pcap sensor: a minimal buffer makes the kernel drop
            # what we would only have counted.
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        self.drain()
        # A message that came after the drain is counted at the first beat.
        self.last = Backlog(0, backlog(self.sock).dropped)

    def gather(self) -> int:
        """Every message since the last look, read or dropped (at the
        counting minimum, only a message or two is there to read)."""
        if not self.reads:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
        n = sum(_packets(self.buf, size) for size in self.receive())
        now = backlog(self.sock)
        n += (now.dropped - self.last.dropped) % COUNTER
        self.last = Backlog(0, now.dropped)
        return n

    def take_count(self) -> int:
        if self.reads:
            return sum(self._count_acks(size) for size in self.receive())
        now = backlog(self.sock)
        n = arrived(self.last, now)
        if n == 0 and now.queued:
            # The first quiet beat: what is queued was counted before. Read
            # now, the next message wakes a listening loop and can fire an
            # arm. One that comes meanwhile is dropped or stays queued, and
            # counts; only one that this read takes along goes uncounted, and
            # it would have had to come within these few microseconds.
            self.drain()
            after = backlog(self.sock)
            n = arrived(Backlog(0, now.dropped), after)
            now = after
        self.last = now
        return n

    def _count_acks(self, size: int) -> int:
        n = 0
        for pos, length in netlink.iter_packets(self.buf, size):
            payload = netlink.find_attribute(
                self.buf, pos + netlink.NFLOG_ATTRS_AT, pos + length, netlink.NFULA_PAYLOAD
            )
            if payload is not None and decode.tcp_ack(bytes(payload)):
                n += 1
        return n

    def forget(self) -> None:
        """Its count is not wanted (the state is up, another group keeps it
        so): empty the queue, so that ``arm`` fires only on what comes next."""
        if backlog(self.sock).queued:
            self.drain()
        self.last = Backlog(0, 0)


class NflogCapture:
    """The sensor's group, whose first message starts; while up, the group
    that keeps the state up (--keep-group): the same one, another one bound
    beside it, or none (another sensor binds it)."""

    def __init__(self, cfg: wire.Message) -> None:
        group = int(cfg["group"])
        keeper = cfg.get("count_group", group)
        self.want_packet = bool(cfg["want_packet"])
        ack_only = bool(cfg["ack_only"])
        buf = bytearray(RECV_BUFFER)
        copy_range = wire.SNAPLEN if self.want_packet else SUMMARY_COPY
        self.trigger = Group(group, copy_range, ack_only and keeper == group, buf)
        self.counter: Group | None = self.trigger if keeper == group else None
        self.woken_by = self.trigger
        if keeper is not None and keeper != group:
            try:
                self.counter = Group(int(keeper), SUMMARY_COPY, ack_only, buf)
            except OSError:
                self.trigger.sock.close()
                raise

    def fileno(self) -> int:
        return self.woken_by.sock.fileno()

    def _trigger(self, buf: netlink.ReadableBuffer, pos: int,
                 length: int) -> loop.FirstPacket | None:
        pkt = netlink.parse_packet(buf, pos, length)
        if pkt is None:
            return None
        data, link = _frame(pkt)
        facts = decode.describe(data, link)
        prefix = pkt.attrs.get_str("prefix")
        if prefix:
            facts["prefix"] = prefix[: wire.MAX_PREFIX]
        return loop.FirstPacket(link, facts, data if self.want_packet and data else None)

    def arm(self) -> loop.FirstPacket | None:
        # Every message carries the packet (the copy mode never changes), so
        # the newest one queued since the last count can be the trigger.
        self.woken_by = self.trigger
        newest = self.trigger.arm()
        return None if newest is None else self._trigger(newest, 0, len(newest))

    def read_trigger(self) -> loop.FirstPacket | None:
        buf = self.trigger.buf
        for size in self.trigger.receive():
            for pos, length in netlink.iter_packets(buf, size):
                return self._trigger(buf, pos, length)
        return None

    def count(self) -> None:
        self.trigger.count()
        if self.counter is not None and self.counter is not self.trigger:
            self.counter.count()
        self.woken_by = self.counter or self.trigger

    def gather(self) -> int:
        return self.trigger.gather()

    def take_count(self) -> int:
        if self.counter is not self.trigger:
            self.trigger.forget()
        return 0 if self.counter is None else self.counter.take_count()

    def adopt(self, fds: list[int]) -> None:
        # The group stays bound whatever the interfaces do: never asked for.
        for fd in fds:
            os.close(fd)

    def check(self) -> wire.Mode | None:
        # Reading SO_ERROR clears it: an overflow wakes a listening loop once
        # (POLLERR), not on every poll until the queue is read.
        for group in {self.trigger, self.counter or self.trigger}:
            group.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return None


def _packets(buf: netlink.ReadableBuffer, size: int) -> int:
    return sum(1 for _ in netlink.iter_packets(buf, size))


def _frame(pkt: netlink.Packet) -> tuple[bytes, str]:
    """The packet as bytes for the summary and the -w file, and its link type.

    The payload starts at the network header. With an Ethernet link header
    (packets that came in through an Ethernet device) the frame is rebuilt
    as it was on the wire: from the bridge's full L2 header when there is one
    (it keeps an in-band 802.1Q tag, which the 14-byte hardware header cuts),
    with a tag the kernel had moved into metadata put back.
    """
    attrs = pkt.attrs
    payload = attrs.get_bytes("payload") or b""
    header = attrs.get_bytes("l2hdr")
    if header is None or len(header) < ETH_HLEN:
        header = attrs.get_bytes("hwheader")
        if (
            header is None
            or len(header) != ETH_HLEN
            or attrs.get_int("hwtype") != ARPHRD_ETHER
            or attrs.get_int("hwlen") != ETH_HLEN
        ):
            return _raw_ip(pkt, payload), "raw"
    vlan = attrs.get_nested("vlan")
    if vlan is not None:
        tci = vlan.get_int("tci")
        if tci is not None:
            tag = struct.pack("!HH", vlan.get_int("proto") or 0x8100, tci)
            header = header[:12] + tag + header[12:]
    return header + payload, "ether"


def _raw_ip(pkt: netlink.Packet, payload: bytes) -> bytes:
    """The payload, when it is IP. Only a bridge logs other protocols (ARP,
    ...); without a link header their bytes would be read as IP."""
    if pkt.family in (socket.AF_INET, socket.AF_INET6):
        return payload
    hdr = pkt.attrs.get_tuple("packet_hdr")
    return payload if hdr is not None and hdr[0] in (ETH_P_IP, ETH_P_IPV6) else b""


def main() -> None:
    loop.run("nflog", NflogCapture)


if __name__ == "__main__":
    main()
