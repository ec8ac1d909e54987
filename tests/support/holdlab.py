"""The hold's lab: the daemon's namespace (the server side) joined to a
client namespace by a veth pair, iptables-nft rules that log new
connections to an NFLOG group and then queue them, a service that start
launches and that is ready when start returns, and clients that time what
they get.

This kernel has no nft ``queue`` statement (CONFIG_NFT_QUEUE is not set), so
the rules are iptables-nft's ``-j NFQUEUE``.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.support.netlab import Netns, sh, wait_for

SERVER_IP, CLIENT_IP = "10.204.0.1", "10.204.0.2"
TCP_PORT, UDP_PORT = 8080, 8053
GROUP, QUEUE = 7, 7
SERVER = Path(__file__).resolve().parent / "hold_server.py"


class Pair:
    """``server``: the namespace the daemon runs in (its end ``inside``,
    srv0 by default); ``client``: a second one (``cli0``), removed by
    ``close``."""

    def __init__(self, server: Netns, inside: str = "srv0") -> None:
        self.server = server
        self.client = Netns()
        server.ip("link", "add", inside, "type", "veth", "peer", "name", "cli0",
                  "netns", self.client.name)
        server.ip("addr", "add", f"{SERVER_IP}/24", "dev", inside)
        self.client.ip("addr", "add", f"{CLIENT_IP}/24", "dev", "cli0")
        server.ip("link", "set", inside, "up")
        self.client.ip("link", "set", "cli0", "up")

    def close(self) -> None:
        self.client.delete()


def iptables(ns: Netns, *rule: str) -> None:
    sh(*ns.exec_argv("iptables-nft", *rule))


def hold_rules(ns: Netns, *match: str, chain: str = "INPUT", table: str = "filter",
               group: int = GROUP, queue: int = QUEUE) -> None:
    """Log what ``match`` selects to ``group`` (the sensor triggers on it),
    then queue it to ``queue`` (the hold); ``--queue-bypass``: nobody bound,
    it passes."""
    iptables(ns, "-t", table, "-A", chain, *match, "-j", "NFLOG", "--nflog-group", str(group))
    iptables(ns, "-t", table, "-A", chain, *match, "-j", "NFQUEUE", "--queue-num", str(queue),
             "--queue-bypass")


def new_connections(ns: Netns, chain: str = "INPUT", table: str = "filter") -> None:
    """The usual rules: TCP SYNs and new UDP flows to the service's ports."""
    hold_rules(ns, "-i", "srv0", "-p", "tcp", "--dport", str(TCP_PORT), "--syn",
               chain=chain, table=table)
    hold_rules(ns, "-i", "srv0", "-p", "udp", "--dport", str(UDP_PORT), "-m", "conntrack",
               "--ctstate", "NEW", chain=chain, table=table)


def serve(folder: Path, address: str = SERVER_IP) -> str:
    """Shell lines that start the test service in the background and return
    once it listens (its pid in ``folder``/service.pid, for stop)."""
    return f"""\
"{sys.executable}" -S "{SERVER}" {address} {TCP_PORT} {UDP_PORT} >/dev/null 2>&1 &
    echo $! > "{folder}/service.pid"
    until ss -Htln "sport = :{TCP_PORT}" | grep -q .; do sleep 0.01; done"""


def service_script(folder: Path, start: str | None = None, stop: str = "") -> Path:
    """start/stop of the test service: by default start runs ``serve``, or
    the shell lines given (fail, hang, add a route); stop kills the service,
    then runs ``stop``."""
    script = folder / "service.sh"
    script.write_text(f"""#!/bin/sh
case "$1" in
start)
    {serve(folder) if start is None else start}
    ;;
stop)
    kill "$(cat "{folder}/service.pid")"
    {stop}
    ;;
esac
""")
    script.chmod(0o755)
    return script


def run_server(ns: Netns, address: str = SERVER_IP) -> subprocess.Popen[bytes]:
    """The test service started by the test itself, listening once this returns."""
    proc = subprocess.Popen(ns.exec_argv(sys.executable, "-S", str(SERVER), address,
                                         str(TCP_PORT), str(UDP_PORT)))
    wait_for("the service listening", lambda: sh(*ns.exec_argv(
        "ss", "-Htln", f"sport = :{TCP_PORT}")).stdout.strip())
    return proc


def first_byte(ns: Netns, address: str = SERVER_IP, port: int = TCP_PORT,
               timeout: float = 5.0) -> float:
    """Seconds from connect() to the first byte of the answer (raises what
    the connection met: ConnectionRefusedError, TimeoutError)."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    with sock:
        sock.settimeout(timeout)
        began = time.monotonic()
        sock.connect((address, port))
        data = sock.recv(16)
        took = time.monotonic() - began
    assert data == b"hello\n", data
    return took


def udp_ask(ns: Netns, address: str = SERVER_IP, port: int = UDP_PORT,
            timeout: float = 5.0) -> float:
    """One datagram, never resent: seconds until its echo (raises
    TimeoutError when none comes, ConnectionRefusedError on an ICMP
    port unreachable)."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        sock.settimeout(timeout)
        sock.connect((address, port))
        began = time.monotonic()
        sock.send(b"ping")
        data = sock.recv(16)
        took = time.monotonic() - began
    assert data == b"ping", data
    return took


def queue_line(ns: Netns, queue: int = QUEUE) -> list[int] | None:
    """The kernel's figures for ``queue`` in ``ns`` (portid, held, ..., last
    id): None when nobody has it bound."""
    text = sh(*ns.exec_argv("cat", "/proc/net/netfilter/nfnetlink_queue")).stdout
    for line in text.splitlines():
        fields = [int(f) for f in line.split()]
        if fields and fields[0] == queue:
            return fields[1:]
    return None
