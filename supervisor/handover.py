"""Fresh capture sockets for a pcap sensor whose interface came back.

A sensor may not bind (its seccomp allow-list forbids it: an unprivileged
bind could point the socket at any other interface), so its socket stays tied
to an interface that was deleted. While its beats say so (``Mode.LOST``),
the supervisor opens new sockets as root, filters attached and locked,
exactly as the sensor did at its start, and passes them over the socketpair
(SCM_RIGHTS) with a ``sockets`` record.

Only when the interface really came back: its index now differs from the one
the sensor's sockets were bound to (the interface's index when the sensor
was spawned, or when sockets were last handed over). A deleted interface
that comes back has a new index, so each return gets one handover. A sensor
that lies about its state gets nothing: not a stream of root-opened sockets
at every beat, only, at most, sockets for the same interface and filter
once per time the interface came back.
"""

from __future__ import annotations

import socket

from tuninetd.common import packet_socket, wire
from tuninetd.supervisor.children import Worker


def _index(name: str) -> int:
    """The interface's index now; 0 when there is none of that name."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return 0


class Handover:
    def __init__(self) -> None:
        # Per sensor (its role): the pid and the index its sockets are for.
        self.bound: dict[str, tuple[int, int]] = {}

    def spawned(self, w: Worker) -> None:
        """A pcap sensor just started: it opens its sockets on the interface
        of this index."""
        if w.config.get("kind") == "pcap" and w.config.get("bpf") is not None:
            self.bound[w.role] = (w.pid, _index(w.config["name"]))

    def offer(self, w: Worker) -> bool:
        """Hand ``w`` fresh sockets if it has lost its interface and the
        interface is back with a new index; True when they went out. Called
        on its beats."""
        if w.sock is None or w.config.get("kind") != "pcap" or w.mode is not wire.Mode.LOST:
            return False
        if w.config.get("bpf") is None:
            return False  # never had an interface: late_interfaces replaces the sensor
        index = _index(w.config["name"])
        if index == 0 or self.bound.get(w.role) == (w.pid, index):
            return False  # not back yet, or never gone
        try:
            socks = packet_socket.open_sockets(w.config)
        except OSError:
            return False  # tried again on the next beat
        try:
            if not all(packet_socket.bound_to(s) == w.config["name"] for s in socks):
                return False
            socket.send_fds(w.sock, [wire.encode("sockets")], [s.fileno() for s in socks])
        except OSError:
            return False
        finally:
            for s in socks:
                s.close()
        self.bound[w.role] = (w.pid, index)
        return True
