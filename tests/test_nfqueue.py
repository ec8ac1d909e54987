"""The hold's queue socket on the real kernel: a namespace of the test's own,
an iptables-nft ``-j NFQUEUE --queue-bypass`` rule on the datagrams it sends
itself over loopback, a receiver that says what got through."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from tests.support.netlab import Netns, wait_for
from tuninetd.common import netlink
from tuninetd.supervisor import nfqueue

pytestmark = pytest.mark.root

QUEUE = 5
PORT = 7000


class Loop:
    """Datagrams to 127.0.0.1:PORT, queued to QUEUE; sockets made in the namespace."""

    def __init__(self, ns: Netns) -> None:
        self.ns = ns
        subprocess.run(ns.exec_argv("iptables-nft", "-A", "OUTPUT", "-p", "udp", "--dport",
                                    str(PORT), "-j", "NFQUEUE", "--queue-num", str(QUEUE),
                                    "--queue-bypass"), check=True)
        with ns.entered():
            self.receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            self.sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.receiver.bind(("127.0.0.1", PORT))
        self.receiver.setblocking(False)

    def queue(self, maxlen: int = 256) -> nfqueue.Queue:
        with self.ns.entered():
            return nfqueue.Queue(QUEUE, maxlen)

    def figures(self) -> nfqueue.Figures | None:
        with self.ns.entered():  # /proc/net shows the opener's namespace
            f = open(nfqueue.PROC_QUEUES)  # noqa: SIM115 - closed below
        with f:
            return nfqueue.figures(f.read(), QUEUE)

    def send(self, *payloads: bytes) -> None:
        for p in payloads:
            self.sender.sendto(p, ("127.0.0.1", PORT))

    def received(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self.receiver.recv(100))
            except BlockingIOError:
                return out

    def close(self) -> None:
        self.receiver.close()
        self.sender.close()


@pytest.fixture
def loop(netns: Netns) -> Iterator[Loop]:
    lab = Loop(netns)
    yield lab
    lab.close()


def held(loop: Loop, n: int) -> nfqueue.Figures:
    def probe() -> nfqueue.Figures | None:
        f = loop.figures()
        return f if f is not None and f.held == n else None

    return wait_for(f"{n} packets held", probe)


def received(loop: Loop, n: int) -> list[bytes]:
    """What came through, once it is ``n`` datagrams."""
    got: list[bytes] = []

    def probe() -> list[bytes] | None:
        got.extend(loop.received())
        return got if len(got) >= n else None

    return wait_for(f"{n} datagrams", probe)


def test_held_packets_wait_then_go_in_order(loop: Loop) -> None:
    q = loop.queue()
    loop.send(b"a", b"b", b"c")
    figures = held(loop, 3)
    assert loop.received() == []
    assert wait_for("their messages", lambda: q.drain() or q.messages) == 3
    assert q.release(netlink.NF_ACCEPT) == 3
    assert received(loop, 3) == [b"a", b"b", b"c"]
    # Released and passing: nothing more is held, nothing more is told us.
    loop.send(b"d")
    assert wait_for("the next one", loop.received) == [b"d"]
    after = loop.figures()
    assert after is not None and (after.held, after.last_id) == (0, figures.last_id)
    assert q.drain() == 0
    q.close()


def test_drop_verdict_and_holding_again(loop: Loop) -> None:
    q = loop.queue()
    loop.send(b"a")
    held(loop, 1)
    assert q.release(netlink.NF_DROP) == 1
    q.set_maxlen(256)
    loop.send(b"b")
    held(loop, 1)
    assert loop.received() == []
    assert q.release(netlink.NF_ACCEPT) == 1
    assert wait_for("b", loop.received) == [b"b"]
    q.close()


def test_bound_with_length_zero_nothing_is_held(loop: Loop) -> None:
    q = loop.queue(maxlen=0)
    loop.send(b"a", b"b")
    assert received(loop, 2) == [b"a", b"b"]
    figures = loop.figures()
    assert figures is not None and (figures.held, figures.last_id) == (0, 0)
    assert q.drain() == 0 and q.release(netlink.NF_ACCEPT) == 0
    q.close()


def test_past_its_length_the_queue_lets_packets_pass(loop: Loop) -> None:
    q = loop.queue(maxlen=2)
    loop.send(b"a", b"b", b"c", b"d")
    assert received(loop, 2) == [b"c", b"d"]
    held(loop, 2)
    assert q.release(netlink.NF_ACCEPT) == 2
    assert received(loop, 2) == [b"a", b"b"]
    q.close()


def test_a_full_receive_buffer_is_survived(loop: Loop) -> None:
    """ENOBUFS: the kernel could not tell us of some packets; FAIL_OPEN let
    them pass. The rest stay held and are released as usual."""
    q = loop.queue()
    q.sock.setsockopt(socket.SOL_SOCKET, nfqueue.SO_RCVBUFFORCE, 0)  # the kernel's minimum
    payloads = [b"%d" % i for i in range(200)]
    loop.send(*payloads)
    passed = received(loop, 1)
    figures = loop.figures()
    assert figures is not None and 0 < figures.held < 200
    q.drain()
    assert q.overruns >= 1
    assert q.release(netlink.NF_ACCEPT) == figures.held
    rest = received(loop, figures.held)
    assert sorted(passed + rest) == sorted(payloads)
    q.close()


def test_closing_drops_the_held_and_bypass_passes_the_next(loop: Loop) -> None:
    q = loop.queue()
    loop.send(b"a")
    held(loop, 1)
    q.close()
    assert wait_for("the queue unbound", lambda: loop.figures() is None)
    loop.send(b"b")
    assert wait_for("b", loop.received) == [b"b"]


def test_a_queue_bound_by_another_process_is_refused_naming_it(loop: Loop) -> None:
    code = ("import sys\nfrom tuninetd.supervisor import nfqueue\n"
            f"q = nfqueue.Queue({QUEUE}, 256)\nprint('bound', flush=True)\nsys.stdin.read()\n")
    other = subprocess.Popen(loop.ns.exec_argv(sys.executable, "-c", code),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert other.stdout is not None and other.stdout.readline() == "bound\n"
        with pytest.raises(nfqueue.QueueError) as caught:
            loop.queue()
        # The holder's pid and command line, as /proc tells them.
        assert f"queue {QUEUE} is already bound by another process (pid {other.pid}, " \
            f"{sys.executable} -c" in str(caught.value.strerror)
    finally:
        other.kill()
        other.wait()
