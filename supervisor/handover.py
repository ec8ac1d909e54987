"""Fresh capture sockets for a pcap sensor whose interface came back.

A sensor may not bind (its seccomp allow-list forbids it: an unprivileged
bind could point the socket at any other interface), so its socket stays tied
to an interface that was deleted. While its beats say so (``pcap.LOST``),
the supervisor opens new sockets as root, filters attached and locked,
exactly as the sensor did at its start, and passes them over the socketpair
(SCM_RIGHTS) with a ``sockets`` record. A sensor that lies about its state
gets only what it already holds: sockets for the same interface and filter.
"""

from __future__ import annotations

import socket

from tuninetd.common import wire
from tuninetd.sensors import pcap
from tuninetd.supervisor.children import Worker


def offer(w: Worker) -> bool:
    """Hand ``w`` fresh sockets if it has lost its interface and the
    interface is there again; True when they went out. Called on its beats."""
    if w.sock is None or w.config.get("kind") != "pcap" or w.mode != pcap.LOST:
        return False
    if w.config.get("bpf") is None:
        return False  # never had an interface: late_interfaces replaces the sensor
    try:
        socks = pcap.open_sockets(w.config)
    except OSError:
        return False  # tried again on the next beat
    try:
        if not all(pcap.bound_to(s) == w.config["name"] for s in socks):
            return False
        socket.send_fds(w.sock, [wire.encode("sockets")], [s.fileno() for s in socks])
    except OSError:
        return False
    finally:
        for s in socks:
            s.close()
    return True
