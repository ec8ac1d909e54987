"""The hold's NFQUEUE socket: bound, sized, released and drained by the
supervisor, which reads no packet data.

nfnetlink wants CAP_NET_ADMIN from the process that opened the socket and
from every sender of a verdict or a config message, and whoever keeps it can
rewrite the firewall over the same socket: so the supervisor owns it, and no
worker does.

- Bind: copy mode META, FAIL_OPEN and the max length in one request. A queue
  bound without a copy mode drops every packet that reaches it, and the rule's
  bypass does not apply then.
- Hold: with a max length K the kernel keeps up to K packets and sends us one
  message each, which is read and thrown away: only its header is looked at,
  to count it. Past K, or when our receive buffer is full, FAIL_OPEN lets the
  packet through.
- Pass: with max length 0 every packet goes on inside the kernel, and nothing
  reaches us.
- Release: max length 0, then one verdict for every id up to the last one the
  kernel gave (from /proc: ids wrap, so no id means "all"), then drain.

When the socket closes (exit, crash), the kernel drops what it held; with the
rule's ``--queue-bypass`` new packets then pass.
"""

from __future__ import annotations

import errno
import glob
import os
import socket
from dataclasses import dataclass

from tuninetd.common import netlink

PROC_QUEUES = "/proc/net/netfilter/nfnetlink_queue"
PROC_NETLINK = "/proc/net/netlink"
SO_RCVBUFFORCE = 33  # not in the socket module
# Thousands of META messages: held packets' messages fit long before the
# queue's own length is reached.
RCVBUF = 1 << 20
RECV_BUFFER = 64 * 1024
ACK_TIMEOUT = 2.0
NO_NFQUEUE = "no NFQUEUE support in this kernel (nfnetlink_queue)"


@dataclass(frozen=True, slots=True)
class Figures:
    """One queue's line in /proc/net/netfilter/nfnetlink_queue."""

    portid: int  # the netlink port of the socket bound to it
    held: int  # packets waiting for a verdict
    last_id: int  # the id the kernel gave last


def figures(text: str, queue: int) -> Figures | None:
    """The kernel's figures for ``queue`` in the text of PROC_QUEUES; None:
    nobody has it bound."""
    for line in text.splitlines():
        fields = line.split()
        # queue, portid, total, copy mode, copy range, dropped, user dropped, last id, 1
        if len(fields) >= 8 and fields[0] == str(queue):
            return Figures(int(fields[1]), int(fields[2]), int(fields[7]))
    return None


def port_owner(portid: int) -> str | None:
    """``pid N (command)`` of the process holding the netfilter netlink socket
    with port ``portid`` here, if it can be found."""
    inode = None
    try:
        with open(PROC_NETLINK, encoding="ascii") as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                # sk, protocol, port, groups, rmem, wmem, dump, locks, drops, inode
                if len(fields) >= 10 and fields[1] == str(netlink.NETLINK_NETFILTER) \
                        and fields[2] == str(portid):
                    inode = fields[9]
    except OSError:
        return None
    if inode is None:
        return None
    target = f"socket:[{inode}]"
    for fd in glob.glob("/proc/[0-9]*/fd/*"):
        try:
            if os.readlink(fd) != target:
                continue
            pid = fd.split("/")[2]
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
        except OSError:
            continue
        return f"pid {pid}, {command[:60]}" if command else f"pid {pid}"
    return None


class QueueError(OSError):
    pass


class Queue:
    """One bound queue. ``messages``: packet messages read since it was
    bound (each is a packet the kernel held, or tried to)."""

    def __init__(self, number: int, maxlen: int) -> None:
        self.number = number
        self.buf = bytearray(RECV_BUFFER)
        self.seq = 0
        self.messages = 0
        self.overruns = 0  # reads that found our buffer overrun (ENOBUFS)
        # Opened here, so it shows the namespace the socket lives in.
        self.proc = os.open(PROC_QUEUES, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW,
                                      netlink.NETLINK_NETFILTER)
        except OSError as exc:
            if exc.errno in (errno.EPROTONOSUPPORT, errno.EAFNOSUPPORT):
                raise QueueError(exc.errno, NO_NFQUEUE) from None
            raise
        try:
            self.sock.bind((0, 0))
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RCVBUF)
            self.sock.settimeout(ACK_TIMEOUT)
            self._bind(maxlen)
            self.sock.setblocking(False)
        except BaseException:
            self.close()
            raise

    def fileno(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()
        os.close(self.proc)

    def figures(self) -> Figures | None:
        os.lseek(self.proc, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(self.proc, 65536):
            chunks.append(chunk)
        return figures(b"".join(chunks).decode("ascii", "replace"), self.number)

    def _bind(self, maxlen: int) -> None:
        err = self._request(netlink.nfqueue_config(
            self.number, self._next_seq(),
            cmd=(netlink.NFQNL_CFG_CMD_BIND, 0),
            params=(0, netlink.NFQNL_COPY_META),
            queue_maxlen=maxlen,
            mask=netlink.NFQA_CFG_F_FAIL_OPEN,
            flags=netlink.NFQA_CFG_F_FAIL_OPEN,
        ), wait=True)
        if not err:
            return
        if err in (errno.EPERM, errno.EBUSY):
            # EPERM also answers a sender without CAP_NET_ADMIN: the caller has it.
            held = self.figures()
            owner = port_owner(held.portid) if held is not None else None
            raise QueueError(err, f"queue {self.number} is already bound by another process"
                             + (f" ({owner})" if owner else ""))
        if err in (errno.EINVAL, errno.EOPNOTSUPP, errno.ENOENT):
            raise QueueError(err, NO_NFQUEUE)
        raise QueueError(err, f"cannot bind queue {self.number}: {os.strerror(err)}")

    def _next_seq(self) -> int:
        self.seq = self.seq % 0xFFFFFFFF + 1
        return self.seq

    def _request(self, message: bytes, wait: bool = False) -> int | None:
        """Send one request and read up to its ack: the errno it carries (0:
        done), None when the ack was lost to an overrun (the kernel acted on
        the request all the same: it does so before it answers). The kernel
        answers before ``send`` returns, so without ``wait`` what is queued
        is read and no more."""
        seq = self.seq
        self.sock.send(message)
        while True:
            try:
                size = self.sock.recv_into(self.buf)
            except (BlockingIOError, TimeoutError):
                if wait:
                    raise QueueError(errno.ETIMEDOUT,
                                     f"the kernel did not answer on queue {self.number}") from None
                return None
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1
                continue
            for pos, length in netlink.messages(self.buf, size):
                kind = netlink.message_type(self.buf, pos)
                if kind == netlink.NFQUEUE_PACKET:
                    self.messages += 1
                elif kind == netlink.NLMSG_ERROR and length >= netlink.NLMSGHDR.size + 4:
                    _len, _kind, _flags, got, _pid = netlink.NLMSGHDR.unpack_from(self.buf, pos)
                    if got == seq:
                        return -int(netlink.NLMSGERR.unpack_from(
                            self.buf, pos + netlink.NLMSGHDR.size)[0])

    def set_maxlen(self, maxlen: int) -> None:
        err = self._request(netlink.nfqueue_config(self.number, self._next_seq(),
                                                   queue_maxlen=maxlen))
        if err:
            raise QueueError(err, f"cannot set the length of queue {self.number}: "
                             f"{os.strerror(err)}")

    def release(self, verdict: int) -> int:
        """Let everything held go with ``verdict`` (NF_ACCEPT or NF_DROP), and
        hold nothing more: returns how many packets were held."""
        self.set_maxlen(0)
        now = self.figures()
        if now is not None and now.held:
            err = self._request(netlink.nfqueue_verdict_batch(
                self.number, self._next_seq(), verdict, now.last_id))
            # ENOENT: nothing was left to release.
            if err and err != errno.ENOENT:
                raise QueueError(err, f"cannot release queue {self.number}: {os.strerror(err)}")
        self.drain()
        return now.held if now is not None else 0

    def drain(self) -> int:
        """Read what is queued, unread but for the headers; returns how many
        packet messages that was."""
        before = self.messages
        while True:
            try:
                size = self.sock.recv_into(self.buf)
            except BlockingIOError:
                return self.messages - before
            except OSError as exc:
                if exc.errno != errno.ENOBUFS:
                    raise
                self.overruns += 1  # FAIL_OPEN let the packets we had no room for pass
                continue
            self.messages += netlink.count_messages(self.buf, size, netlink.NFQUEUE_PACKET)
