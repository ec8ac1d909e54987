"""Stray packets, on real traffic: the start threshold (--start-packets within
--start-window) and the keep-alive source (--keep-filter, -a, --keep-group),
with the whole daemon in a throwaway namespace, frames crafted with scapy
sent through a veth pair, nftables rules logging to NFLOG groups, and a
recording command; status, SIGUSR1 and metrics showing both.

The ``time.sleep`` calls only pace packets (strays further apart than the
window); every wait for the daemon polls with a deadline.
"""

from __future__ import annotations

import re
import signal
import socket
import sys
import time
from collections.abc import Callable
from functools import partial

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6ND_RS, IPv6
from scapy.layers.l2 import ARP, Ether

from tests.support import netlab
from tests.support.netlab import (
    Lab,
    Run,
    Sent,
    TapAddresses,
    epoch,
    samples,
    scrape,
    send_udp,
    sensors,
    sh,
)
from tests.support.nft_rules import log_rules
from tests.support.timing import BEAT
from tuninetd.supervisor.ops import client

pytestmark = pytest.mark.root

SLACK = 0.8  # scheduling noise on top of the promised bounds (a busy machine)
WINDOW = 0.5
# Strays this far apart never share a window, even when the sensor reads the
# first one late on a busy machine.
STRAY_GAP = 3 * WINDOW
MAC_A, MAC_B = "02:00:00:00:22:0a", "02:00:00:00:22:0b"
V4_A, V4_B = "10.22.0.1", "10.22.0.2"
V4_LOCAL, V4_PEER = "10.23.0.1", "10.23.0.2"
V6_LOCAL, V6_PEER = "fd00:23::1", "fd00:23::2"
MAC_LOCAL, MAC_PEER = "02:00:00:00:23:01", "02:00:00:00:23:02"
TAP = TapAddresses(MAC_LOCAL, (V4_LOCAL, V6_LOCAL), MAC_PEER, (V4_PEER, V6_PEER))
PORT, KEEP_PORT = 9922, 9923

# What a modern host sends on its own: an IPv6 router solicitation and an ARP.
ROUTER_SOLICITATION = bytes(Ether(src=MAC_A, dst="33:33:00:00:00:02")
                            / IPv6(src="fe80::22:a", dst="ff02::2", hlim=255) / ICMPv6ND_RS())
ARP_REQUEST = bytes(Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff")
                    / ARP(hwsrc=MAC_A, psrc=V4_A, pdst=V4_B))
# Only what the test sends: tap0 itself sends router solicitations and MLD
# reports of its own when it comes up.
STRAYS_FILTER = f"ether src {MAC_A} and (icmp6 or arp or udp or tcp)"


def udp4(dport: int = 5353, payload: bytes = b"u" * 24) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=V4_A, dst=V4_B)
                 / UDP(sport=40000, dport=dport) / payload)


def tcp_keepalive() -> bytes:
    """A TCP keepalive: an ACK with no payload, what an idle session sends."""
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=V4_A, dst=V4_B)
                 / TCP(sport=40022, dport=22, flags="A", seq=1000, ack=1))


def send(sock: socket.socket, *frames: bytes) -> Sent:
    before = time.time()
    for frame in frames:
        sock.send(frame)
    return Sent(before, time.time())


def stream(send_one: Callable[[], Sent], every: float, until: Callable[[], bool],
           longest: float) -> Sent:
    """``send_one`` every ``every`` seconds until ``until()`` or ``longest``
    seconds have gone by (the sleeps pace the traffic); the last send."""
    start = time.monotonic()
    last = send_one()
    n = 1
    while not until() and time.monotonic() - start < longest:
        time.sleep(max(0.0, start + n * every - time.monotonic()))
        last = send_one()
        n += 1
    return last


stop_delta = partial(netlab.stop_delta, beat=BEAT, slack=SLACK)


def summary(run: Run, kind: str = "PCAP", lines: int = 2) -> list[str]:
    run.daemon.wait_log(f"{kind}: start command done")
    return run.after(f"{kind}: start command done", lines=lines)


def usr1_lines(run: Run) -> list[str]:
    run.daemon.proc.send_signal(signal.SIGUSR1)
    run.daemon.wait_log("- current status:")
    log = run.daemon.lines()
    at = log.index("SIGUSR1 caught:")
    end = next(i for i in range(at, len(log)) if log[i].startswith("- current status:"))
    return log[at : end + 1]


# -- the start threshold ------------------------------------------------------------


def test_stray_packets_never_start_a_burst_does(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", STRAYS_FILTER, "--start-packets", "3",
                  "--start-window", str(WINDOW))
    tx = lab.ns.sender()
    # Each alone in its window: a router solicitation, an ARP, and a pair
    # (two of three) of each, a window apart.
    for frames in ((ROUTER_SOLICITATION,), (ARP_REQUEST,), (ROUTER_SOLICITATION, ARP_REQUEST),
                   (ARP_REQUEST,), (ROUTER_SOLICITATION,)):
        send(tx, *frames)
        time.sleep(STRAY_GAP)
    burst = send(tx, udp4(), udp4(dport=5354), udp4(dport=5355))
    got = run.wait_events(1)
    # Had a stray started it, the start would carry the stray's summary.
    assert got[0][2:] == ["pcap:tap0", V4_A, V4_B, "UDP"], got
    assert epoch(got[0]) >= burst.before
    assert summary(run) == [
        f"|- IPv4 {V4_A} > {V4_B}, NXT_HDR: 0x11 (UDP)",
        f"|- MAC: {MAC_A} > {MAC_B}, EtherType: 0x0800 (IPv4)",
    ], run.daemon.text()
    # Up, every packet counts again: the strays keep it up as -f says.
    last = stream(lambda: send(tx, ARP_REQUEST), every=0.3, until=lambda: False, longest=1.6)
    assert run.kinds() == ["start"], run.events()
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)


def test_a_slow_trickle_never_starts_the_window_is_anew_each_time(lab: Lab) -> None:
    """Two packets a window, forever: never three within one window. The
    start that the third packet of a burst then brings carries the burst's
    first packet, not a trickle's."""
    run = lab.run("-i", "tap0", "-f", STRAYS_FILTER, "--start-packets", "3",
                  "--start-window", str(WINDOW))
    tx = lab.ns.sender()
    for _ in range(4):
        send(tx, ARP_REQUEST, ARP_REQUEST)
        time.sleep(STRAY_GAP)
    first = send(tx, ROUTER_SOLICITATION)
    send(tx, udp4(), udp4())
    got = run.wait_events(1)
    assert epoch(got[0]) >= first.before
    assert summary(run) == [
        "|- IPv6 fe80::22:a > ff02::2, NXT_HDR: 0x3A (IPv6-ICMP)",
        f"|- MAC: {MAC_A} > 33:33:00:00:00:02, EtherType: 0x86DD (IPv6)",
    ], run.daemon.text()


def test_nflog_start_threshold(lab: Lab) -> None:
    lab.ns.address_tap(TAP)
    log_rules(lab.ns, f"udp dport {PORT} log group 22")
    run = lab.run("-n", "22", "--start-packets", "3", "--start-window", str(WINDOW))
    for _ in range(3):
        send_udp(lab.ns, V6_PEER, PORT, count=2)  # two a window: never enough
        time.sleep(STRAY_GAP)
    burst = send_udp(lab.ns, V4_PEER, PORT, count=3)
    got = run.wait_events(1)
    assert got[0][2:] == ["nflog:22", V4_LOCAL, V4_PEER, "UDP"], got
    assert epoch(got[0]) >= burst.before
    assert summary(run, "NFLOG", 1) == [f"|- IPv4 {V4_LOCAL} > {V4_PEER}, NXT_HDR: 0x11 (UDP)"]


def test_a_burst_past_the_counting_buffer_counts_whole_pcap(lab: Lab) -> None:
    """A threshold far above what the counting buffer holds: the packets the
    kernel drops count as those read do. 30 (led by an ARP) stay short of
    40; 60 (led by UDP) start."""
    run = lab.run("-i", "tap0", "-f", STRAYS_FILTER, "--start-packets", "40",
                  "--start-window", "1")
    tx = lab.ns.sender()
    send(tx, ARP_REQUEST, *[udp4()] * 29)
    time.sleep(2 * 1.0 + STRAY_GAP)
    burst = send(tx, *[udp4(dport=5354)] * 60)
    got = run.wait_events(1)
    assert epoch(got[0]) >= burst.before
    assert got[0][2:] == ["pcap:tap0", V4_A, V4_B, "UDP"], got


def test_a_burst_past_the_counting_buffer_counts_whole_nflog(lab: Lab) -> None:
    lab.ns.address_tap(TAP)
    log_rules(lab.ns, f"udp dport {PORT} log group 23")
    run = lab.run("-n", "23", "--start-packets", "40", "--start-window", "1")
    send_udp(lab.ns, V6_PEER, PORT, count=30)
    time.sleep(2 * 1.0 + STRAY_GAP)
    burst = send_udp(lab.ns, V4_PEER, PORT, count=60)
    got = run.wait_events(1)
    assert epoch(got[0]) >= burst.before
    assert got[0][2:] == ["nflog:23", V4_LOCAL, V4_PEER, "UDP"], got


# -- what keeps it up ---------------------------------------------------------------


def test_keep_filter_lets_it_stop_while_keepalives_go_on(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp or tcp", "--keep-filter", "udp")
    tx = lab.ns.sender()
    # The keep filter's packets keep it up ...
    send(tx, tcp_keepalive())
    run.wait_events(1)
    last = stream(lambda: send(tx, udp4()), every=0.3, until=lambda: False, longest=2.0)
    assert run.kinds() == ["start"], f"stopped while keep-filter packets flowed: {run.events()}"
    # ... and keepalives, which match -f but not the keep filter, do not:
    # stop comes on time while they go on.
    stream(lambda: send(tx, tcp_keepalive()), every=0.1, longest=1.0 + BEAT + SLACK + 2.0,
           until=lambda: len(run.events()) >= 2)
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)
    # Down, a keepalive matches -f: it starts, as before.
    send(tx, tcp_keepalive())
    run.wait_events(3)
    block = usr1_lines(run)
    assert '- using packets matching "udp" to reset TTL timer (pcap)' in block, block


def test_ack_only_keeps_its_meaning_and_log_lines(lab: Lab) -> None:
    """-a is the ACK keep filter: ACKs keep it up, other matching packets do
    not; its SIGUSR1 line is the original's, and --check-config shows the
    filter it compiles to."""
    run = lab.run("-i", "tap0", "-f", "udp or tcp", "-a")
    tx = lab.ns.sender()
    send(tx, udp4())
    run.wait_events(1)
    last = stream(lambda: send(tx, tcp_keepalive()), every=0.3, until=lambda: False,
                  longest=2.0)
    assert run.kinds() == ["start"], f"stopped while TCP ACKs flowed: {run.events()}"
    stream(lambda: send(tx, udp4()), every=0.1, longest=1.0 + BEAT + SLACK + 2.0,
           until=lambda: len(run.events()) >= 2)
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)
    block = usr1_lines(run)
    assert block[:5] == [
        "SIGUSR1 caught:",
        "- capture engine: pcap, tap0",
        '-- pcap filter: "udp or tcp"',
        "- using packets with tcp[ack] flag to reset TTL timer",
        f"- event path: {run.script}",
    ], block
    shown = sh(*lab.ns.exec_argv(
        sys.executable, "-m", "tuninetd.supervisor.main", "-i", "tap0", "-f", "udp or tcp", "-a",
        "-c", str(run.script), "--check-config"), check=False)
    assert shown.returncode == 0, shown.stderr
    assert "# pcap:tap0 keeps it up with: tcp[ack] packets, filter \"udp or tcp\"" in shown.stdout
    assert re.search(r'keep-alive "\(udp or tcp\) and \(\(ip and tcp\[13\] & 0x10 != 0\)',
                     shown.stdout), shown.stdout


def test_keep_group_decides_what_keeps_it_up(lab: Lab) -> None:
    """Group 24 starts (all the service's traffic); while up only group 25
    keeps it up, which the rules give all but the keepalives (to KEEP_PORT)."""
    lab.ns.address_tap(TAP)
    log_rules(lab.ns, f"udp dport {{ {PORT}, {KEEP_PORT} }} log group 24",
        f"udp dport {PORT} log group 25")
    run = lab.run("-n", "24", "--keep-group", "25", "--start-packets", "2",
                  "--start-window", "1.0")
    send_udp(lab.ns, V4_PEER, KEEP_PORT, count=2)
    run.wait_events(1)
    last = stream(lambda: send_udp(lab.ns, V4_PEER, PORT), every=0.3, until=lambda: False,
                  longest=2.0)
    assert run.kinds() == ["start"], f"stopped while group 25 packets flowed: {run.events()}"
    stream(lambda: send_udp(lab.ns, V4_PEER, KEEP_PORT), every=0.1,
           longest=1.0 + BEAT + SLACK + 2.0, until=lambda: len(run.events()) >= 2)
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)
    assert sensors(run.daemon).keys() == {"tuninetd: sensor nflog 24"}, "one sensor binds both"
    block = usr1_lines(run)
    assert "- using packets of nflog group 25 to reset TTL timer" in block, block
    assert "- start threshold: 2 packets within 1 sec." in block, block


# -- where it shows -----------------------------------------------------------------


def test_status_and_metrics_show_threshold_and_keep_alive(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp or tcp", "--keep-filter", "udp and port 53",
                  "--start-packets", "4", "--start-window", "2.5", "--metrics", "127.0.0.1:0",
                  ttl=None)
    record = client.query(run.daemon.control)
    assert record["start"] == {"packets": 4, "window_seconds": 2.5,
                               "text": "4 matching packets within 2.5 s"}, record
    assert record["keep_alive"] == {"pcap:tap0": 'keep filter "udp and port 53"'}, record
    text = client.render(client.sanitised(record))
    assert "start on:     4 matching packets within 2.5 s" in text, text
    assert 'kept up by:   pcap:tap0: keep filter "udp and port 53"' in text, text
    line = run.daemon.wait_log("Metrics on http://127.0.0.1:")[0]
    port = int(re.findall(r":(\d+)/metrics", line)[0])
    got = samples(scrape(lab.ns, port)[1])
    assert got[("tuninetd_start_packets", ())] == 4
    assert got[("tuninetd_start_window_seconds", ())] == 2.5
    keep = ("tuninetd_keep_alive", (("sensor", "pcap:tap0"),
                                    ("source", 'keep filter "udp and port 53"')))
    assert got[keep] == 1
