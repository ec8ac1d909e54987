"""The life of a sensor process, whatever it captures from.

Started as root by the supervisor: read the config, open the capture handle,
drop privileges for good, say hello, then alternate between two modes until
the supervisor goes away:

- armed: wait for the first matching packet, decode it, send ``trigger``,
  switch to counting by itself (so no packet falls between the two modes);
  with a start threshold (--start-packets N), the first packet opens a
  window (--start-window): the capture counts, in the kernel, as it does
  while up, and the trigger (that first packet's) goes out once N packets
  came within the window; when the window ends short of them, the sensor
  is armed again and the packets are forgotten;
- counting: read (almost) nothing; each beat, ask the capture how many
  matching packets went by and send that as ``beat`` (when there is news);
  after a quiet beat, sleep until the next packet or the heartbeat.

The supervisor sends ``count`` (another sensor fired, stop waiting),
``arm`` (the state went down), ``report`` (beat now: the ttl ran out and
the supervisor wants to know of every packet up to now before it stops) and
``sockets`` (fresh capture handles, passed along with it, for a capture in
trouble). The capture decides what a mode costs.

From the drop on, the process runs under the seccomp allow-list that the
supervisor built (supervisor/sandbox/allowlist.py) and sandbox.py installs: what this
loop and the captures do at run time must stay in it.
"""

from __future__ import annotations

import base64
import os
import select
import socket
import time
from collections.abc import Callable

from tuninetd.common import wire, worker
from tuninetd.sensors import decode, sandbox

# typing is for the type checker alone: a sensor would carry it.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Protocol
else:
    Protocol = object

# Seconds from the switch to counting (after a trigger, or ordered) to the beat
# that reports it: a sensor that just (re)started while the state is up shows
# it is capturing without waiting a whole beat.
FIRST_COUNT = 0.1
# Capture handles that come with one ``sockets`` record (pcap with a keep-alive
# filter: two).
MAX_HANDLES = 2


class FirstPacket:
    """The first matching packet while armed, decoded: what a ``trigger``
    record carries."""

    __slots__ = ("facts", "link", "packet")

    def __init__(self, link: str, facts: decode.Facts, packet: bytes | None = None) -> None:
        self.link = link
        self.facts = facts  # what the packet holds (and the NFLOG prefix), not words
        self.packet = packet


class StartWindow:
    """The start threshold: ``need`` packets within ``span`` seconds of the
    first. Pure bookkeeping; the loop feeds it the capture's counts."""

    __slots__ = ("ends", "first", "need", "seen", "span")

    def __init__(self, need: int, span: float) -> None:
        self.need = need
        self.span = span
        self.first: FirstPacket | None = None  # open while not None
        self.seen = 0
        self.ends = 0.0

    def offer(self, trig: FirstPacket | None, now: float) -> FirstPacket | None:
        """A first packet while armed: the trigger to send now (no threshold),
        or None (nothing came, or it opened the window)."""
        if trig is None or self.need <= 1:
            return trig
        self.first, self.seen, self.ends = trig, 1, now + self.span
        return None

    def add(self, n: int, now: float) -> FirstPacket | None:
        """``n`` more packets came: the first one's trigger once there are
        enough. When there are not and the window is over, it closes."""
        self.seen += n
        first = self.first
        if first is not None and (self.seen >= self.need or now >= self.ends):
            self.first = None
            return first if self.seen >= self.need else None
        return None

    def close(self) -> None:
        self.first = None


class Capture(Protocol):
    """One capture handle. Every method runs unprivileged except ``__init__``."""

    def fileno(self) -> int:
        """What wakes the loop: armed, the trigger's handle; counting, the
        one that counts (they differ with a keep-alive filter or group)."""
        ...

    def arm(self) -> FirstPacket | None:
        """Switch to armed. Packets that matched since the last ``take_count``
        (they raced the supervisor's stop decision) fire at once: return one."""
        ...

    def read_trigger(self) -> FirstPacket | None:
        """Armed and readable: the trigger, or None when what came in did not count."""
        ...

    def count(self) -> None:
        """Switch to counting, forgetting what was counted before."""
        ...

    def gather(self) -> int:
        """A start window is open: counting as ``count`` does, matching
        packets (the start filter's) since the trigger was read or the last
        call, the trigger itself not among them. The queue is left empty, so
        that the next packet wakes the loop."""
        ...

    def take_count(self) -> int:
        """Counting: matching packets since the last call."""
        ...

    def check(self) -> wire.Mode | None:
        """Once a beat, and when the handle reports an error: recover what can
        be recovered; return the mode while capture is impossible (e.g. the
        interface is gone), None when all is well."""
        ...

    def adopt(self, fds: list[int]) -> None:
        """Replace the capture handles with these, which the supervisor opened."""
        ...


def _send_trigger(sock: socket.socket, trig: FirstPacket) -> None:
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
        sandbox.limit()
        sandbox.confine(cfg["seccomp"])
    except OSError as exc:
        worker.fatal(sock, f"{kind} {cfg['name']}: {exc.strerror or exc}")
    except Exception as exc:
        worker.fatal(sock, f"{kind} {cfg['name']}: {type(exc).__name__}: {exc}")
    wire.send(sock, "hello", pid=os.getpid())
    beat = float(cfg["beat"])
    window = StartWindow(int(cfg.get("start_packets", 1)), float(cfg.get("start_window", beat)))
    try:
        _serve(sock, cap, title, beat, window)
    except Exception as exc:  # a bug must reach the supervisor's log, not vanish
        worker.fatal(sock, f"{kind} {cfg['name']}: {type(exc).__name__}: {exc}")
    os._exit(0)


def _serve(sock: socket.socket, cap: Capture, title: worker.Title, beat: float,
           window: StartWindow) -> None:
    """Armed, the sensor wakes for a packet or for its heartbeat. Counting,
    it reads the count every beat while packets go by (that bounds how late
    a stop can be) and sends it when packets went by, its mode changed, the
    supervisor asked, or the heartbeat is due. After a beat with no packet it
    listens instead: the next packet wakes it and it counts every beat again,
    and until then only the heartbeat does. A quiet sensor costs no wake-up
    but its heartbeat, and its supervisor none at all in between.

    While a start window is open the sensor is armed, as the supervisor
    sees it, and listens: each wake-up adds the capture's count (so a burst
    starts at once, and the wake-ups before a start are fewer than the
    threshold), and the window's end is a wake-up of its own."""
    heartbeat = beat * worker.HEARTBEAT_BEATS
    armed = True
    listening = False  # counting, quiet: woken by the next packet

    def first_packet(trig: FirstPacket | None) -> FirstPacket | None:
        """Armed, a packet came (or raced the arm): the trigger to send now,
        or None, with a start window opened when it takes more packets."""
        now = time.monotonic()
        pending = window.offer(trig, now)
        if window.first is not None:
            pending = window.add(cap.gather(), now)  # what came with the first one
        return pending

    trouble = cap.check()
    pending = first_packet(cap.arm())
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    polled = -1  # the capture's descriptor in the poller
    next_wake = worker.next_tick(time.monotonic(), heartbeat)
    next_heartbeat = next_wake
    said: wire.Mode | None = None  # the mode of the last beat sent
    report_now = False
    while True:
        if pending is not None:
            _send_trigger(sock, pending)
            # The supervisor first, if woken on this CPU: what follows here
            # (counting from now on) is not on the start's way.
            os.sched_yield()
            pending = None
            armed = listening = False
            cap.count()
            next_wake = min(next_wake, time.monotonic() + min(beat, FIRST_COUNT))
        # Armed, or counting and quiet: woken by the next packet. Otherwise the
        # capture fd is not polled at all, errors included: under load an nflog
        # overrun raises POLLERR after every read of its queue, and the beat
        # looks at the capture (its counters, any trouble) anyway.
        wanted = cap.fileno() if (armed or listening) and not trouble else -1
        if wanted != polled:
            if polled >= 0:
                poller.unregister(polled)
            if wanted >= 0:
                poller.register(wanted, select.POLLIN)
            polled = wanted
        title.set((trouble or (wire.Mode.ARMED if armed else wire.Mode.COUNTING)).value)
        wake = next_wake if window.first is None else min(next_wake, window.ends)
        timeout = max(0.0, wake - time.monotonic())
        packet_came = False
        for fd, events in poller.poll(timeout * 1000):
            if fd == sock.fileno():
                data, fds = wire.recv_with_fds(sock, MAX_HANDLES)
                if not data:
                    return
                verb = wire.decode(data)["t"]
                if verb == "sockets":
                    if polled >= 0:
                        poller.unregister(polled)
                        polled = -1
                    cap.adopt(fds)
                    trouble = cap.check()
                    if armed:
                        window.close()
                        pending = pending or first_packet(cap.arm())
                    else:
                        cap.count()
                elif verb == "arm" and not armed:
                    armed, listening = True, False
                    pending = first_packet(cap.arm())
                elif verb == "count" and armed:
                    armed = False
                    window.close()
                    cap.count()
                    next_wake = min(next_wake, time.monotonic() + min(beat, FIRST_COUNT))
                elif verb == "report":
                    report_now = True  # the supervisor is about to decide a stop
            elif events & (select.POLLERR | select.POLLHUP | select.POLLNVAL):
                was, trouble = trouble, cap.check()
                # e.g. nflog's overrun: activity
                packet_came = listening or window.first is not None
                report_now = report_now or trouble != was  # the supervisor logs it now
            elif window.first is not None:
                packet_came = True
            elif armed and pending is None:
                pending = first_packet(cap.read_trigger())
            elif listening:
                packet_came = True
        now = time.monotonic()
        if window.first is not None and (packet_came or now >= window.ends):
            # gather counts up to now: after a window that ended short, arm
            # fires only on a packet that came later, which opens the next.
            pending = window.add(cap.gather(), now)
            if pending is None and window.first is None:
                pending = first_packet(cap.arm())  # short of the threshold
            packet_came = False
        if packet_came:
            # Counted at the next beat, like any packet while counting: left
            # unreported until then, one that races an arm still fires it.
            listening = False
            next_wake = min(next_wake, worker.next_tick(now, beat))
        scheduled = now >= next_wake
        if scheduled or report_now:
            trouble = cap.check()
            n = 0 if armed or trouble else cap.take_count()
            mode = trouble or (wire.Mode.ARMED if armed else wire.Mode.COUNTING)
            # In trouble, every beat: the supervisor answers a lost
            # interface with fresh sockets once it is back (handover).
            if n or report_now or trouble or mode != said or now >= next_heartbeat - beat / 2:
                wire.send(sock, "beat", n=n, mode=mode.value)
                said = mode
                next_heartbeat = worker.next_tick(now, heartbeat)
            if scheduled:
                listening = not armed and not trouble and n == 0
                slow = (armed or listening) and not trouble
                next_wake = worker.next_tick(now, heartbeat if slow else beat)
            report_now = False
