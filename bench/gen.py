"""The traffic generator: one frame, sent over and over on an interface, as
fast as the kernel takes it or paced to a rate.

``python -m bench.gen DEV FRAME_HEX [--rate PPS] [--seconds S]`` run inside
the namespace (``ip netns exec``). An AF_PACKET socket with
PACKET_QDISC_BYPASS hands frames straight to the driver, and ``sendmmsg``
(through ctypes) sends up to BATCH of them per system call, so the Python
loop runs once per batch, not once per packet: a veth takes well over a
million frames per second from it on one core. Paced, it sends what is due
every half millisecond. SIGTERM or SIGINT ends it early. It prints one JSON
line: how many frames the kernel took, over how long, the rate, and the
CLOCK_REALTIME nanoseconds of the first and last send.
"""

from __future__ import annotations

import argparse
import ctypes
import errno
import json
import signal
import socket
import sys
import time
from types import FrameType

SOL_PACKET = 263
PACKET_QDISC_BYPASS = 20
BATCH = 512
PACE_STEP = 0.0005  # seconds between paced batches

_libc = ctypes.CDLL(None, use_errno=True)


class IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.POINTER(IoVec)),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


class MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", MsgHdr), ("len", ctypes.c_uint)]


class Sender:
    """``sendmmsg`` of one frame, BATCH times per call at most."""

    def __init__(self, dev: str, frame: bytes) -> None:
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        self.sock.setsockopt(SOL_PACKET, PACKET_QDISC_BYPASS, 1)
        self.sock.bind((dev, 0))
        self._frame = ctypes.create_string_buffer(frame, len(frame))
        self._iov = IoVec(ctypes.cast(self._frame, ctypes.c_void_p), len(frame))
        self._msgs = (MMsgHdr * BATCH)()
        for msg in self._msgs:
            msg.hdr.iov = ctypes.pointer(self._iov)
            msg.hdr.iovlen = 1

    def send(self, n: int) -> int:
        """Frames the kernel took (0 when its queue is full for now)."""
        done = int(_libc.sendmmsg(self.sock.fileno(), self._msgs, min(n, BATCH), 0))
        if done < 0:
            err = ctypes.get_errno()
            if err in (errno.ENOBUFS, errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(err, f"sendmmsg: {errno.errorcode.get(err, err)}")
        return done


def run(dev: str, frame: bytes, rate: int, seconds: float) -> dict[str, float | int]:
    stop = False

    def finish(_sig: int, _frame: FrameType | None) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, finish)
    signal.signal(signal.SIGINT, finish)
    sender = Sender(dev, frame)
    sent = 0
    first_ns = time.time_ns()
    last_ns = first_ns
    start = time.monotonic()
    end = start + seconds
    while not stop:
        now = time.monotonic()
        if now >= end:
            break
        if rate:
            due = int((now - start) * rate) - sent
            if due <= 0:
                time.sleep(PACE_STEP)
                continue
        else:
            due = BATCH
        while due > 0 and not stop:
            done = sender.send(due)
            if done:
                last_ns = time.time_ns()
            due -= max(done, 1)
            sent += done
    elapsed = time.monotonic() - start
    return {
        "sent": sent,
        "seconds": elapsed,
        "pps": sent / elapsed if elapsed > 0 else 0.0,
        "first_ns": first_ns,
        "last_ns": last_ns,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.gen")
    parser.add_argument("dev")
    parser.add_argument("frame", help="the frame, in hex")
    parser.add_argument("--rate", type=int, default=0, help="packets per second; 0: flat out")
    parser.add_argument("--seconds", type=float, default=1.0)
    args = parser.parse_args(argv)
    result = run(args.dev, bytes.fromhex(args.frame), args.rate, args.seconds)
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
