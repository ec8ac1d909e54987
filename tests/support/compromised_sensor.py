"""A sensor taken over by an attacker, for tests/test_sandbox.py.

No hook in the product. This module is started the way the supervisor
starts every sensor (``Worker.spawn``, its module pointed here) and runs the
real sensor's whole setup through ``tuninetd.sensors.loop.run``: the channel,
the capture opened as root (filter attached and locked), the privilege drop
and the seccomp allow-list. Where the loop would begin, it runs the attack
named in its config instead (when the test says go, after it has inspected
the process), as code injected into a compromised sensor would, and
reports the outcome on the socketpair as an ``error`` record
(``ATTACK: outcome``). A system call outside the allow-list ends it with
SIGSYS instead.

With ``unconfined`` in the config, ``sandbox.confine`` is replaced by a
no-op before the setup: the same attack against the other layers alone (the
locked filter, the closed descriptors, the jail), which also shows that the
attack code works where nothing stops it.

``python -m tests.support.compromised_sensor supervise MARKER ARGV...`` runs the
real supervisor (the command line ARGV) with its pcap sensor pointed here:
the first sensor breaks the allow-list on its first packet (with
``supervise-at-hello``: right after its hello; ``supervise-lost``: it says
its interface is gone at every beat), each replacement (MARKER exists by
then) is the real sensor.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import signal
import socket
import sys
import time
from collections.abc import Callable
from typing import Any

from tests.support.fake_sensor import run_with_sensor
from tuninetd.common import fprog, packet_socket, wire, worker
from tuninetd.sensors import loop, nflog, pcap, sandbox

SO_DETACH_FILTER = 27
ACCEPT_ALL = [[0x06, 0, 0, 0xFFFFFFFF]]  # BPF_RET | BPF_K: the whole packet
PTRACE_TRACEME = 0
SPOOFED = bytes.fromhex("ffffffffffff020000000066" "0806") + bytes(28)  # an ARP frame

_libc = ctypes.CDLL(None, use_errno=True)


def _outcome(action: Callable[[], object]) -> str:
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc))
    return "ok"


def _abstract_connect(name: str) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.connect("\0" + name)


def _udp_out(port: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.sendto(b"exfiltrated", ("127.0.0.1", port))


def _ptrace_me() -> None:
    if _libc.ptrace(PTRACE_TRACEME, 0, None, None) != 0:
        raise OSError(ctypes.get_errno(), "ptrace")


def _fork() -> None:
    if os.fork() == 0:
        os._exit(0)
    os.wait()


def _hoard_descriptors() -> None:
    """As many descriptors as it may have; EMFILE when that is few (the
    sensor's own limit), success when it got hundreds."""
    got: list[int] = []
    try:
        while len(got) < 1000:
            got.append(os.dup(worker.CHANNEL_FD))
    except OSError as exc:
        if len(got) < 100:
            raise OSError(exc.errno, f"after {len(got)}") from None
    finally:
        for fd in got:
            os.close(fd)


def _grow_memory() -> None:
    try:
        hoard = bytearray(1 << 30)  # 1 GiB
    except MemoryError:
        raise OSError(errno.ENOMEM, "1 GiB") from None
    del hoard


def attacks(cap: Any, cfg: wire.Message) -> dict[str, Callable[[], object]]:
    handle = cap.trigger_sock if isinstance(cap, pcap.PcapCapture) else cap.trigger.sock
    accept_all = fprog.Program(ACCEPT_ALL)
    return {
        "detach-filter": lambda: handle.setsockopt(socket.SOL_SOCKET, SO_DETACH_FILTER, 0),
        "replace-filter": lambda: handle.setsockopt(
            socket.SOL_SOCKET, packet_socket.SO_ATTACH_FILTER, accept_all.fprog),
        "bind-other-interface": lambda: handle.bind(("lo", packet_socket.ETH_P_ALL)),
        "send-spoofed-frame": lambda: handle.send(SPOOFED),
        "new-udp-socket": lambda: _udp_out(int(cfg["port"])),
        "connect-abstract-unix": lambda: _abstract_connect(str(cfg["abstract"])),
        "execve": lambda: os.execv("/bin/sh", ["sh", "-c", "true"]),
        "ptrace": _ptrace_me,
        "fchdir-stray-fd": lambda: os.fchdir(int(cfg["stray"])),
        "write-stderr": lambda: os.write(2, str(cfg["forged"]).encode()),
        "kill": lambda: os.kill(int(cfg["victim"]), signal.SIGKILL),
        "fork": _fork,
        "hoard-descriptors": _hoard_descriptors,
        "grow-memory": _grow_memory,
    }


class Rogue(pcap.PcapCapture):
    """Taken over by its first packet: it opens a socket instead of decoding."""

    def read_trigger(self) -> loop.FirstPacket | None:
        with contextlib.suppress(OSError):
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        return loop.FirstPacket(link="raw", facts={})  # not reached: the socket call kills it


def _no_confine(program: object) -> None:
    """``sandbox.confine`` for an unconfined run: the allow-list left out."""


def _break_at_once(sock: socket.socket, cap: loop.Capture, title: worker.Title,
                   beat: float, window: loop.StartWindow) -> None:
    """Right after its hello: a call the allow-list refuses, so that the
    supervisor looks at it while seccomp is killing it."""
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM)


def _claim_lost(sock: socket.socket, cap: loop.Capture, title: worker.Title,
                beat: float, window: loop.StartWindow) -> None:
    """Says "waiting for interface" at every beat though its interface is
    there, to be handed fresh root-opened sockets; counts the descriptors
    that came in its title (``... got N``) and closes them."""
    got = 0
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    title.set(f"got {got}")
    while True:
        wire.send(sock, "beat", n=0, mode=wire.Mode.LOST.value)
        deadline = time.monotonic() + beat
        while (left := deadline - time.monotonic()) > 0:
            if not poller.poll(left * 1000):
                continue
            data, fds = wire.recv_with_fds(sock, 4)
            if not data:
                os._exit(0)
            got += len(fds)
            for fd in fds:
                os.close(fd)
            title.set(f"got {got}")


def main() -> None:
    """What the worker bootstrap runs: the real setup, then the attack."""
    real_serve = loop._serve
    captured: dict[str, Any] = {}

    def opener(cfg: wire.Message) -> loop.Capture:
        # Still root here, before the drop, as the real sensors' opening is.
        captured["cfg"] = cfg
        if cfg.get("unconfined"):
            sandbox.confine = _no_confine
        if "marker" in cfg:  # under supervise(): rogue once, then real
            loop._serve = real_serve
            first = not os.path.exists(str(cfg["marker"]))
            with open(str(cfg["marker"]), "a"):
                pass
            if first and cfg.get("flavour") == "at-hello":
                loop._serve = _break_at_once
            elif first and cfg.get("flavour") == "lost":
                loop._serve = _claim_lost
            return Rogue(cfg) if first else pcap.PcapCapture(cfg)
        return pcap.PcapCapture(cfg) if cfg["kind"] == "pcap" else nflog.NflogCapture(cfg)

    def attack(sock: socket.socket, cap: loop.Capture, title: worker.Title, beat: float,
               window: loop.StartWindow) -> None:
        cfg = captured["cfg"]
        name = str(cfg["attack"])
        wire.recv(sock)  # the test's go, once it has looked at us
        result = _outcome(attacks(cap, cfg)[name])
        wire.send(sock, "error", reason=f"{name}: {result}")

    loop._serve = attack
    loop.run("attacked", opener)


def supervise(marker: str, argv: list[str], flavour: str = "") -> None:
    """The real supervisor; its pcap sensor is this module, which breaks
    the allow-list once (no MARKER yet: on its first packet, or with
    ``flavour`` at-hello right after its hello) and then behaves. With
    ``flavour`` lost, the first one claims its interface is gone instead."""
    from tuninetd.supervisor.config import configure
    run_with_sensor(configure.parse(argv).settings, "tests.support.compromised_sensor",
                    {"marker": marker, "flavour": flavour})


if __name__ == "__main__":
    if sys.argv[1:2] == ["supervise"]:
        supervise(sys.argv[2], sys.argv[3:])
    elif sys.argv[1].startswith("supervise-"):
        supervise(sys.argv[2], sys.argv[3:], sys.argv[1].removeprefix("supervise-"))
