"""The life of a sensor process, whatever it captures from.

Started as root by the supervisor: read the config, open the capture handle,
drop privileges for good, say hello, then alternate between two modes until
the supervisor goes away:

- armed: wait for the first matching packet, decode it, send ``trigger``,
  switch to counting by itself (so no packet falls between the two modes);
- counting: read (almost) nothing; each beat, ask the capture how many
  matching packets went by and send that as ``beat``.

The supervisor sends ``count`` (another sensor fired, stop waiting),
``arm`` (the state went down), ``report`` (beat now: the ttl ran out and
the supervisor wants to know of every packet up to now before it stops) and
``sockets`` (fresh capture handles, passed along with it, for a capture in
trouble). The capture decides what a mode costs.

From the drop on, the process runs under the seccomp allow-list of
sandbox.py: what this loop and the captures do at run time must stay in it.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import time
from collections.abc import Callable
from typing import NamedTuple, Protocol

from tuninetd.common import wire, worker
from tuninetd.sensors import decode, sandbox

# Seconds from the switch to counting (after a trigger, or ordered) to the beat
# that reports it: a sensor that just (re)started while the state is up shows
# it is capturing without waiting a whole beat.
FIRST_COUNT = 0.1
# Capture handles that come with one ``sockets`` record (pcap with -a: two).
MAX_HANDLES = 2


class Trigger(NamedTuple):
    link: str
    facts: decode.Facts  # what the packet holds (and the NFLOG prefix), not words
    packet: bytes | None = None


class Capture(Protocol):
    """One capture handle. Every method runs unprivileged except ``__init__``."""

    def fileno(self) -> int: ...

    def arm(self) -> Trigger | None:
        """Switch to armed. Packets that matched since the last ``take_count``
        (they raced the supervisor's stop decision) fire at once: return one."""
        ...

    def read_trigger(self) -> Trigger | None:
        """Armed and readable: the trigger, or None when what came in did not count."""
        ...

    def count(self) -> None:
        """Switch to counting, forgetting what was counted before."""
        ...

    def take_count(self) -> int:
        """Counting: matching packets since the last call."""
        ...

    def check(self) -> str | None:
        """Once a beat, and when the handle reports an error: recover what can
        be recovered; return a state for the title while capture is impossible
        (e.g. the interface is gone), None when all is well."""
        ...

    def adopt(self, fds: list[int]) -> None:
        """Replace the capture handles with these, which the supervisor opened."""
        ...


def _send_trigger(sock: socket.socket, trig: Trigger) -> None:
    fields: dict[str, object] = {"link": trig.link, **trig.facts}
    if trig.packet is not None:
        fields["pkt"] = base64.b64encode(trig.packet[: wire.SNAPLEN]).decode()
    wire.send(sock, "trigger", **fields)


def run(kind: str, open_capture: Callable[[wire.Message], Capture]) -> None:
    sock, ppid = worker.channel_from_argv()
    worker.die_with_parent(ppid)
    worker.ignore_terminal_signals()
    cfg = wire.decode(wire.recv(sock))
    title = worker.Title(f"tuninetd: sensor {kind} {cfg['name']}", f"tuninetd-{kind}")
    title.set("starting")
    try:
        cap = open_capture(cfg)
        worker.drop_privileges(cfg["uid"], cfg["gid"], ppid, cfg.get("jail"))
        sandbox.confine(sock.fileno())
    except OSError as exc:
        worker.fatal(sock, f"{kind} {cfg['name']}: {exc.strerror or exc}")
    except Exception as exc:
        worker.fatal(sock, f"{kind} {cfg['name']}: {type(exc).__name__}: {exc}")
    wire.send(sock, "hello", pid=os.getpid())
    try:
        _serve(sock, cap, title, float(cfg["beat"]))
    except Exception as exc:  # a bug must reach the supervisor's log, not vanish
        worker.fatal(sock, f"{kind} {cfg['name']}: {type(exc).__name__}: {exc}")
    os._exit(0)


def _serve(sock: socket.socket, cap: Capture, title: worker.Title, beat: float) -> None:
    armed = True
    trouble = cap.check()
    pending = cap.arm()
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    next_beat = time.monotonic() + beat
    report_now = False
    while True:
        if pending is not None:
            _send_trigger(sock, pending)
            pending = None
            armed = False
            cap.count()
            next_beat = min(next_beat, time.monotonic() + min(beat, FIRST_COUNT))
        # While counting, the capture fd is polled for errors only (events 0).
        poller.register(cap.fileno(), select.POLLIN if armed and not trouble else 0)
        title.set(trouble or ("armed" if armed else "counting"))
        timeout = max(0.0, next_beat - time.monotonic())
        for fd, events in poller.poll(timeout * 1000):
            if fd == sock.fileno():
                data, fds, _flags, _addr = socket.recv_fds(
                    sock, wire.MAX_MESSAGE + 1, MAX_HANDLES, socket.MSG_CMSG_CLOEXEC
                )
                if not data:
                    return
                verb = wire.decode(data)["t"]
                if verb == "sockets":
                    poller.unregister(cap.fileno())
                    cap.adopt(fds)
                    trouble = cap.check()
                    if armed:
                        pending = pending or cap.arm()
                    else:
                        cap.count()
                elif verb == "arm" and not armed:
                    armed = True
                    pending = cap.arm()
                elif verb == "count" and armed:
                    armed = False
                    cap.count()
                    next_beat = min(next_beat, time.monotonic() + min(beat, FIRST_COUNT))
                elif verb == "report":
                    report_now = True  # the supervisor is about to decide a stop
            elif events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                trouble = cap.check()
            elif armed and pending is None:
                pending = cap.read_trigger()
        now = time.monotonic()
        if now >= next_beat or report_now:
            trouble = cap.check()
            n = 0 if armed or trouble else cap.take_count()
            wire.send(sock, "beat", n=n, mode=trouble or ("armed" if armed else "counting"))
            if not report_now:
                next_beat = max(next_beat + beat, now)
            report_now = False
