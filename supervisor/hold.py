"""``--hold QUEUE``: the packets of new connections wait in an NFQUEUE until
start has run, so that the first connection is served, not lost.

The sensors still decide (the user's rule logs to an NFLOG group, or a pcap
sensor sees the packets, before it queues them); the hold only gates:

- down, the queue holds up to HOLD_PACKETS packets;
- start ends (done: accept; failed, timed out, killed: ``--hold-fail``), or
  ``--hold-max`` seconds pass since the first held packet, whichever comes
  first: what is held is released, and the queue passes every packet in the
  kernel while the service is up;
- ``tuninetd up`` releases too (accept); going down again (ttl, SIGHUP,
  ``tuninetd down``) holds again.

Nothing per packet reaches us while the queue passes. See nfqueue.py for the
kernel's side.
"""

from __future__ import annotations

import selectors
import time
from collections.abc import Callable

from tuninetd.common import netlink
from tuninetd.common.logs import log
from tuninetd.supervisor import wording
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import StartupError
from tuninetd.supervisor.events import HoldView, Observers, Released
from tuninetd.supervisor.nfqueue import Queue, QueueError

# The kernel never times a held packet out, and holds a client's SYN
# retransmits too: room for a few clients, each retrying a few times.
HOLD_PACKETS = 256
VERDICTS = {"accept": netlink.NF_ACCEPT, "drop": netlink.NF_DROP}


class Hold:
    def __init__(self, cfg: Settings, observers: Observers) -> None:
        assert cfg.hold is not None
        self.number = cfg.hold
        self.hold_max = cfg.hold_max
        self.fail = cfg.hold_fail
        self.observers = observers
        self.queue: Queue | None = None
        self.holding = False
        self.starting = False  # a start is queued or running
        self.service_up = False  # as the service last said
        self.since: float | None = None  # this hold's first packet, or its start
        self.messages_at = 0  # the queue's message count when this hold began
        self.last_id_at = 0  # and the kernel's last id
        self.released = 0
        self.overflowed = 0

    def open(self, selector: selectors.BaseSelector, up: bool) -> None:
        """Bind, holding unless the service is up (a resumed up state)."""
        try:
            self.queue = Queue(self.number, 0 if up else HOLD_PACKETS)
        except QueueError as exc:
            raise StartupError(f"--hold {self.number}: {exc.strerror}") from None
        except OSError as exc:
            raise StartupError(f"--hold {self.number}: cannot bind the queue: "
                               f"{exc.strerror or exc}") from None
        selector.register(self.queue, selectors.EVENT_READ, self._readable)
        self.service_up = up
        log.info("CORE: holding new connections in queue %d%s", self.number,
                 " (up: passing them)" if up else "")
        if not up:
            self._began()

    def _began(self) -> None:
        assert self.queue is not None
        self.holding = True
        self.since = None
        self.messages_at = self.queue.messages
        now = self.queue.figures()
        self.last_id_at = now.last_id if now is not None else 0

    def _hold(self) -> None:
        if self.queue is None or self.holding:
            return
        if self._act(lambda q: q.set_maxlen(HOLD_PACKETS)) is not None:
            self._began()

    def _readable(self, _events: int) -> None:
        assert self.queue is not None
        if self.queue.drain() and self.holding and self.since is None:
            self.since = time.monotonic()

    # -- what the service tells -----------------------------------------------

    def down(self) -> None:
        """The service goes down (or is armed again after a failed start):
        new connections wait for the next start."""
        self.service_up = False
        self._hold()

    def start_queued(self, now: float) -> None:
        self.service_up = self.starting = True
        if self.holding and self.since is None:
            self.since = now

    def start_ended(self, ok: bool, now: float) -> None:
        self.starting = False
        self.release("start done" if ok else "start failed", ok, now)
        # A stop waits behind this start; or it failed, and with drop nothing
        # may pass before a start succeeds.
        if not self.service_up or (not ok and self.fail == "drop"):
            self._hold()

    def up(self, now: float) -> bool:
        """``tuninetd up``, or a start that cancelled a pending stop: the
        service is up without waiting for a start. False: nothing was held."""
        self.service_up = True
        was = self.holding
        self.release("up", True, now)
        return was

    def exiting(self, now: float) -> None:
        """Held packets are dropped when the socket closes: unless --hold-fail
        drop, they are let go first."""
        self.release("exiting", False, now)

    def expire(self, now: float) -> None:
        """--hold-max passed: what is held goes as --hold-fail says. With
        accept, while a start runs, the queue passes from then on (the start
        may yet succeed); else it holds again."""
        self.release(f"held {self.hold_max:g} s", False, now)
        if not (self.starting and self.service_up and self.fail == "accept"):
            self._hold()

    def deadline(self) -> float | None:
        if not self.holding or self.since is None:
            return None
        return self.since + self.hold_max

    # -- the kernel ------------------------------------------------------------

    def release(self, why: str, ok: bool, now: float) -> None:
        if self.queue is None or not self.holding:
            return
        verdict = "accept" if ok else self.fail
        since = self.since
        held = self._act(lambda q: q.release(VERDICTS[verdict]))
        self.holding = False
        self.since = None
        after = self.queue.figures()
        given = ((after.last_id - self.last_id_at) % (1 << 32)) if after is not None else 0
        lost = max(0, given - (self.queue.messages - self.messages_at))
        self.overflowed += lost
        if held is None or not (held or lost):
            return
        self.released += held
        waited = 0.0 if since is None else max(0.0, now - since)
        wording.released(self.number, why, verdict, held, waited, lost, held >= HOLD_PACKETS)
        self.observers.publish(Released(held, verdict, waited, lost))

    def _act(self, action: Callable[[Queue], int | None]) -> int | None:
        """Run ``action`` on the queue; a kernel refusal is logged, never fatal
        (FAIL_OPEN keeps the traffic flowing). None: it failed."""
        assert self.queue is not None
        try:
            result = action(self.queue)
        except OSError as exc:
            log.error("CORE: queue %d: %s", self.number, exc.strerror or exc)
            return None
        return result or 0

    def view(self) -> HoldView:
        held = self.queue.messages - self.messages_at if self.holding and self.queue else 0
        return HoldView(self.number, "holding" if self.holding else "passing", held,
                        self.released, self.overflowed)
