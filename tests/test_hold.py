"""--hold on real parts: the daemon in one namespace with iptables-nft rules
that log new connections to an NFLOG group and queue them to an NFQUEUE, a
real service that start launches, clients in a second namespace.

Timing bounds here are correctness, not speed: TCP resends an unanswered
SYN after one second, so a first byte within 0.9 s means the first SYN was
served, not a retransmit; the speed itself is bench/'s."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import holdlab
from tests.support.holdlab import GROUP, QUEUE, SERVER_IP, TCP_PORT, UDP_PORT, Pair
from tests.support.netlab import Daemon, Netns, ready, sh, wait_for
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

NO_RETRANSMIT = 0.9  # TCP's first SYN retransmit comes after 1 s
CYCLES = 3

StartDaemon = Callable[..., Daemon]


@pytest.fixture
def pair(netns: Netns) -> Iterator[Pair]:
    lab = Pair(netns)
    holdlab.new_connections(netns)
    yield lab
    lab.close()


def daemon(start_daemon: StartDaemon, pair: Pair, script: Path, *args: str,
           hold: bool = True, armed: bool = True) -> Daemon:
    held = ("--hold", str(QUEUE)) if hold else ()
    d = start_daemon(pair.server, "-n", str(GROUP), *held, "-c", str(script), "--beat", str(BEAT),
                     "-t", "60", *args)
    if armed:
        ready(d)
    return d


def client(d: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tuninetd.supervisor.main", *args,
                           "--control", d.control], capture_output=True, text=True,
                          check=True)


def status(d: Daemon) -> dict[str, Any]:
    record: dict[str, Any] = json.loads(client(d, "status", "--json").stdout)[0]
    return record


def down_and_stopped(d: Daemon) -> None:
    """``tuninetd down``, then wait until stop has run and the queue holds."""
    client(d, "down")

    def probe() -> bool:
        s = status(d)
        c = s["commands"]
        return (s["state"] == "down" and c["running"] is None and not c["pending"]
                and s["hold"]["state"] == "holding")

    wait_for("stop run and the queue holding", probe)


def test_the_first_connection_is_served_on_every_cycle(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path))
    for cycle in range(1, CYCLES + 1):
        took = holdlab.first_byte(pair.client)
        assert took < NO_RETRANSMIT, f"cycle {cycle}: first byte after {took:.3f} s"
        d.wait_log("start done: released 1 held packet after", count=cycle)
        assert status(d)["hold"] == {"queue": QUEUE, "state": "passing", "held": 0,
                                     "released": cycle, "overflowed": 0}
        down_and_stopped(d)


def test_without_the_hold_the_first_connection_is_refused(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """The same rules and service: with nobody on the queue, bypass lets the
    SYN reach a port nothing listens on yet."""
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path), hold=False)
    with pytest.raises(ConnectionRefusedError):
        holdlab.first_byte(pair.client)
    d.wait_log("NFLOG: start command done")


def test_a_udp_request_is_answered_without_a_retry(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    daemon(start_daemon, pair, holdlab.service_script(tmp_path))
    assert holdlab.udp_ask(pair.client) < NO_RETRANSMIT


def test_a_failed_start_refuses_the_client_at_once(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path, start="exit 1"))
    with pytest.raises(ConnectionRefusedError):
        holdlab.first_byte(pair.client, timeout=NO_RETRANSMIT)
    d.wait_log("start failed: released 1 held packet")


def test_hold_fail_drop_gives_the_client_nothing(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """Accepted, the datagram would meet a closed port (ICMP: refused);
    dropped, nothing comes back, and the queue holds again."""
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path, start="exit 1"),
               "--hold-fail", "drop")
    with pytest.raises(TimeoutError):
        holdlab.udp_ask(pair.client, timeout=2.0)
    d.wait_log("start failed: dropped 1 held packet")
    assert status(d)["hold"]["state"] == "holding"


def test_a_hanging_start_is_released_at_hold_max(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """The service listens, but start never returns: at --hold-max the SYN
    and its retransmit go, and the connection is served."""
    start = f"{holdlab.serve(tmp_path)}\n    exec sleep 600"
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path, start=start),
               "--hold-max", "2")
    took = holdlab.first_byte(pair.client, timeout=30)
    assert took >= 1.9, f"released after {took:.3f} s, before --hold-max"
    d.wait_log(f"queue {QUEUE}: held 2 s: released")


@contextlib.contextmanager
def a_held_syn(start_daemon: StartDaemon, pair: Pair,
               tmp_path: Path) -> Iterator[tuple[Daemon, socket.socket]]:
    """The test's own service listening, a start that never returns, and a
    client whose SYN the queue holds."""
    server = holdlab.run_server(pair.server)
    try:
        d = daemon(start_daemon, pair, holdlab.service_script(tmp_path, start="exec sleep 600"),
                   "--hold-max", "60")
        with pair.client.entered():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.connect((SERVER_IP, TCP_PORT))
            wait_for("the SYN held", lambda: status(d)["hold"]["held"] >= 1)
            yield d, sock
    finally:
        server.kill()
        server.wait()


def connected(sock: socket.socket, within: float) -> bool:
    _readable, writable, _ = select.select([], [sock], [], within)
    return bool(writable) and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0


def test_tuninetd_up_releases(start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    with a_held_syn(start_daemon, pair, tmp_path) as (d, sock):
        assert "already up: the held packets are released" in client(d, "up").stdout
        assert connected(sock, NO_RETRANSMIT)
        d.wait_log("up: released 1 held packet")


def test_after_sigkill_the_next_syn_bypasses(start_daemon: StartDaemon, pair: Pair,
                                            tmp_path: Path) -> None:
    """The kernel drops what a dead daemon held; with nobody on the queue the
    rule's bypass lets the SYN's retransmit through."""
    with a_held_syn(start_daemon, pair, tmp_path) as (d, sock):
        os.kill(d.pid, signal.SIGKILL)
        wait_for("the queue unbound", lambda: holdlab.queue_line(pair.server) is None)
        assert connected(sock, 10)
        sock.setblocking(True)
        assert sock.recv(16) == b"hello\n"


def test_an_orderly_exit_lets_the_held_packets_go(start_daemon: StartDaemon, pair: Pair,
                                                 tmp_path: Path) -> None:
    """SIGTERM: with --hold-fail accept the held SYN goes on before the
    socket closes (which would drop it), and reaches the listener at once."""
    with a_held_syn(start_daemon, pair, tmp_path) as (d, sock):
        os.kill(d.pid, signal.SIGTERM)
        assert connected(sock, NO_RETRANSMIT)
        d.wait_log("exiting: released 1 held packet")


def test_after_a_failed_start_with_retry_start_it_passes_then_holds_again(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """Standby after the failure: clients are refused at once, not held with
    nothing to start; once the sensors are armed again, the queue holds."""
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path, start="exit 1"),
               "--retry-start", "2")
    with pytest.raises(ConnectionRefusedError):
        holdlab.first_byte(pair.client, timeout=NO_RETRANSMIT)
    d.wait_log("start failed: released 1 held packet")
    assert status(d)["hold"]["state"] == "passing"
    d.wait_log("sensors armed again after the failed start")
    wait_for("holding again", lambda: status(d)["hold"]["state"] == "holding")


def holding(d: Daemon, packets: int) -> Callable[[], bool]:
    return lambda: bool(status(d)["hold"]["held"] == packets)


def test_with_a_start_threshold_what_came_before_waits_too(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """--start-packets 3: the first two datagrams start nothing, and wait;
    the third fires start, and all three are answered."""
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path), "--start-packets", "3",
               "--start-window", "10")
    with pair.client.entered():
        socks = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    try:
        for i, sock in enumerate(socks):
            sock.settimeout(10)
            sock.connect((SERVER_IP, UDP_PORT))
            sock.send(b"ping %d" % i)
            if i < 2:
                wait_for(f"{i + 1} held", holding(d, i + 1))
        assert [sock.recv(16) for sock in socks] == [b"ping 0", b"ping 1", b"ping 2"]
    finally:
        for sock in socks:
            sock.close()
    d.wait_log("start done: released 3 held packets")


def test_a_second_daemon_on_the_queue_exits_1_naming_it(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    first = daemon(start_daemon, pair, holdlab.service_script(tmp_path))
    second = start_daemon(pair.server, "-n", str(GROUP + 1), "--hold", str(QUEUE), "-c",
                          str(holdlab.service_script(tmp_path)), "--beat", str(BEAT))
    assert second.proc.wait(30) == 1
    assert (f"--hold {QUEUE}: queue {QUEUE} is already bound by another process "
            f"(pid {first.pid}, tuninetd: supervisor") in second.text()


def test_held_at_prerouting_a_packet_takes_the_route_start_adds(
        start_daemon: StartDaemon, netns: Netns, tmp_path: Path) -> None:
    """The VPN case: the far side is reachable only once start adds the
    route; held at prerouting, the released datagram is routed after that,
    and its answer comes back."""
    pair = Pair(netns)
    far = Netns()
    try:
        netns.ip("link", "add", "far0", "type", "veth", "peer", "name", "far1", "netns",
                 far.name)
        netns.ip("addr", "add", "10.205.0.1/32", "dev", "far0")  # no route to 10.205.0.0/24
        netns.ip("link", "set", "far0", "up")
        far.ip("addr", "add", "10.205.0.2/24", "dev", "far1")
        far.ip("link", "set", "far1", "up")
        far.ip("route", "add", "10.204.0.0/24", "via", "10.205.0.1")
        pair.client.ip("route", "add", "10.205.0.0/24", "via", SERVER_IP)
        sh(*netns.exec_argv("sysctl", "-qw", "net.ipv4.ip_forward=1"))
        holdlab.hold_rules(netns, "-i", "srv0", "-p", "udp", "--dport", str(UDP_PORT), "-m",
                           "conntrack", "--ctstate", "NEW", table="mangle", chain="PREROUTING")
        server = holdlab.run_server(far, address="10.205.0.2")
        try:
            script = holdlab.service_script(
                tmp_path, start="ip route add 10.205.0.0/24 dev far0 src 10.205.0.1")
            d = daemon(start_daemon, pair, script)
            assert holdlab.udp_ask(pair.client, address="10.205.0.2") < NO_RETRANSMIT
            d.wait_log("start done: released 1 held packet")
        finally:
            server.kill()
            server.wait()
    finally:
        far.delete()
        pair.close()


def test_status_metrics_and_sigusr1_show_the_hold(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    d = daemon(start_daemon, pair, holdlab.service_script(tmp_path),
               "--metrics", "127.0.0.1:9101")
    assert status(d)["hold"] == {"queue": QUEUE, "state": "holding", "held": 0,
                                 "released": 0, "overflowed": 0}
    holdlab.first_byte(pair.client)
    d.wait_log("start done: released 1 held packet")
    assert status(d)["hold"]["released"] == 1
    text = client(d, "status").stdout
    assert f"hold:         queue {QUEUE}, passing: 0 held now, 1 released, 0 overflowed" in text
    with pair.server.entered():
        sock = socket.create_connection(("127.0.0.1", 9101))
    with sock:
        sock.sendall(b"GET /metrics HTTP/1.0\r\n\r\n")
        metrics = b"".join(iter(lambda: sock.recv(65536), b"")).decode()
    assert 'tuninetd_hold_released_packets_total{verdict="accept"} 1.0' in metrics
    assert "tuninetd_hold_held_packets 0.0" in metrics
    os.kill(d.pid, signal.SIGUSR1)
    d.wait_log(f"- hold: queue {QUEUE}, passing, 0 held now, 1 released, 0 overflowed "
               "(at most 10 s, then accept)")


def test_a_daemon_resuming_up_passes_packets_in_the_kernel(
        start_daemon: StartDaemon, pair: Pair, tmp_path: Path) -> None:
    """Restarted while up, the daemon binds with length 0: new connections
    get no id from the queue, and nothing reaches the daemon."""
    name = f"hold-{os.urandom(4).hex()}"
    script = holdlab.service_script(tmp_path)
    first = daemon(start_daemon, pair, script, "--name", name)
    holdlab.first_byte(pair.client)
    first.wait_log("start done: released 1 held packet")
    assert first.stop() == 0
    try:
        again = daemon(start_daemon, pair, script, "--name", name, armed=False)
        again.wait_log("holding new connections in queue 7 (up: passing them)")
        wait_for("up", lambda: status(again)["state"] == "up")
        for _ in range(5):
            holdlab.first_byte(pair.client)
        line = holdlab.queue_line(pair.server)
        assert line is not None and line[1] == 0 and line[-2] == 0  # none held, no id given
        assert status(again)["hold"]["state"] == "passing"
    finally:
        for suffix in (".state", ".lock"):
            Path(f"/run/tuninetd/{name}{suffix}").unlink(missing_ok=True)
