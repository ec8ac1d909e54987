"""The whole daemon on real parts: supervisor, pcap sensors and executor
running in a throwaway network namespace, frames crafted with scapy and sent
through a veth pair (or written into a tun device), a recording command.

Timings are measured, never assumed: every wait polls with a deadline. The
few ``time.sleep`` calls pace a stream of packets; none waits for the daemon.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
from scapy.layers.l2 import Dot1Q, Ether
from scapy.utils import rdpcap

from tests.support import netlab
from tests.support.netlab import Daemon, Lab, Netns, Run, Sent, epoch, wait_for
from tests.support.timing import BEAT, SLACK

pytestmark = pytest.mark.root

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
V4_A, V4_B = "10.9.0.1", "10.9.0.2"
V6_A, V6_B = "fd00:9::1", "fd00:9::2"


# -- frames ----------------------------------------------------------------------


def udp4(src: str = V4_A, dst: str = V4_B, dport: int = 5353, vlan: int | None = None) -> bytes:
    eth = Ether(src=MAC_A, dst=MAC_B)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    return bytes(eth / IP(src=src, dst=dst) / UDP(sport=40000, dport=dport) / (b"u" * 24))


def udp6(vlan: int | None = None) -> bytes:
    eth = Ether(src=MAC_A, dst=MAC_B)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    return bytes(eth / IPv6(src=V6_A, dst=V6_B) / UDP(sport=40000, dport=5353) / (b"v" * 24))


def icmp6(vlan: int | None = None) -> bytes:
    eth = Ether(src=MAC_A, dst=MAC_B)
    if vlan is not None:
        eth = eth / Dot1Q(vlan=vlan)
    return bytes(eth / IPv6(src=V6_A, dst=V6_B) / ICMPv6EchoRequest(data=b"ping" * 6))


def tcp4(flags: str) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IP(src=V4_A, dst=V4_B)
                 / TCP(sport=40000, dport=8080, flags=flags, seq=1, ack=1 if "A" in flags else 0))


def tcp6(flags: str) -> bytes:
    return bytes(Ether(src=MAC_A, dst=MAC_B) / IPv6(src=V6_A, dst=V6_B)
                 / TCP(sport=40000, dport=8080, flags=flags, seq=1, ack=1 if "A" in flags else 0))


# -- sending ---------------------------------------------------------------------


def send(sock: socket.socket, frame: bytes) -> Sent:
    before = time.time()
    sock.send(frame)
    return Sent(before, time.time())


def stream(sock: socket.socket, frames: list[bytes], every: float, duration: float,
           until: Callable[[], bool] = lambda: False) -> Sent:
    """Send ``frames`` in turn every ``every`` seconds for ``duration`` seconds
    (or until ``until()``); the sleeps pace the traffic. Returns the last send."""
    start = time.monotonic()
    n = 0
    last = send(sock, frames[0])
    while True:
        n += 1
        due = start + n * every
        if due - start > duration or until():
            return last
        time.sleep(max(0.0, due - time.monotonic()))
        if until():
            return last
        last = send(sock, frames[n % len(frames)])


# -- the daemon ------------------------------------------------------------------


# (run, stop_index, last, ttl): the stop came [ttl, ttl + BEAT + SLACK] after the
# last packet; returns the delays from just before and just after it.
stop_delta = partial(netlab.stop_delta, beat=BEAT, slack=SLACK)


# -- 1. start on a match, not on a non-match ---------------------------------------


def test_start_on_matching_packet_only(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp port 5353", ttl=None)
    tx = lab.ns.sender()
    send(tx, udp4(src="10.9.0.66", dport=53))  # not matching: must not start
    send(tx, tcp4("S"))  # not matching either
    send(tx, udp4(src="10.9.0.7", dport=5353))
    run.wait_events(1)
    run.daemon.wait_log("PCAP: start command done")
    got = run.events()
    assert [e[0] for e in got] == ["start"], got
    assert got[0][2:] == ["pcap:tap0", "10.9.0.7", V4_B, "UDP"], got


# -- 2. stop after ttl, cycle after cycle ----------------------------------------


def test_stop_after_ttl_over_cycles(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp")
    tx = lab.ns.sender()
    deltas, starts = [], []
    for cycle in range(3):
        trigger = send(tx, udp4(src=f"10.9.1.{cycle + 1}"))
        starts.append(epoch(run.wait_events(2 * cycle + 1)[2 * cycle]) - trigger.before)
        last = send(tx, udp4(src="10.9.2.1"))  # counted, not a trigger: moves the clock
        run.wait_events(2 * cycle + 2)
        deltas.append(stop_delta(run, 2 * cycle + 1, last, 1.0))
    got = run.events()
    assert [e[0] for e in got] == ["start", "stop"] * 3, got
    assert [e[3] for e in got[::2]] == ["10.9.1.1", "10.9.1.2", "10.9.1.3"], got
    print(f"ttl=1 beat={BEAT} stop delays (from before, after the last send):",
          [f"{a:.3f}/{b:.3f}" for a, b in deltas], "start delays:", [f"{a:.3f}" for a in starts])


# -- 3. traffic keeps it up --------------------------------------------------------


def test_traffic_keeps_it_up(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp")
    tx = lab.ns.sender()
    send(tx, udp4())
    run.wait_events(1)
    last = stream(tx, [udp4(src="10.9.3.1")], every=0.3, duration=3.0)
    assert run.kinds() == ["start"], f"stopped while packets flowed: {run.events()}"
    run.wait_events(2)
    early, late = stop_delta(run, 1, last, 1.0)
    print(f"stop after a stream: {early:.3f}/{late:.3f} s after the last packet")


# -- 4. log lines ------------------------------------------------------------------


def test_log_lines_ipv4_order_and_exit_code(lab: Lab) -> None:
    body = 'if [ "$1" = start ]; then echo "script says $1"; sleep 0.5; exit 3; fi'
    run = lab.run("-i", "tap0", "-f", "udp", body=body)
    run.daemon.wait_log("Binding to interface tap0")
    tx = lab.ns.sender()
    send(tx, udp4())
    run.daemon.wait_log("PCAP: start command done")
    seen = time.time()
    started = epoch(run.wait_events(1)[0])
    assert seen >= started + 0.5, (
        f"'start command done' seen {seen - started:.3f} s after the command began, "
        "before it could have finished (it sleeps 0.5 s)"
    )
    log = run.daemon.lines()
    order = ["Binding to interface tap0", "start: script says start", "PCAP: start command done"]
    at = [log.index(line) for line in order]
    assert at == sorted(at), log
    assert run.after("PCAP: start command done") == [
        f"|- IPv4 {V4_A} > {V4_B}, NXT_HDR: 0x11 (UDP)",
        f"|- MAC: {MAC_A} > {MAC_B}, EtherType: 0x0800 (IPv4)",
    ], log
    warn = (f"Warning! Executable command doesn't return 0 code ({run.script} start), "
            "exit code 3")
    assert warn in log, log
    run.wait_events(2)
    run.daemon.wait_log("CORE: executing STOP command...")
    assert sum("Warning!" in line for line in run.daemon.lines()) == 1, run.daemon.text()


def test_log_lines_ipv6_and_vlan_tag(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "icmp6 and ip6 net fd00:9::/64")
    tx = lab.ns.sender()
    ip6_line = f"|- IPv6 {V6_A} > {V6_B}, NXT_HDR: 0x3A (IPv6-ICMP)"
    send(tx, icmp6())
    run.daemon.wait_log("PCAP: start command done")
    assert run.after("PCAP: start command done") == [
        ip6_line, f"|- MAC: {MAC_A} > {MAC_B}, EtherType: 0x86DD (IPv6)"
    ], run.daemon.text()
    run.wait_events(2)
    # Tagged: the kernel hands the tag over as metadata; the sensor restores it.
    send(tx, icmp6(vlan=3))
    run.daemon.wait_log("PCAP: start command done", count=2)
    assert run.after("PCAP: start command done", nth=2) == [
        ip6_line, f"|- MAC: {MAC_A} > {MAC_B}, 802.1Q VID: 3, EtherType: 0x86DD (IPv6)"
    ], run.daemon.text()
    run.wait_events(4)
    run.daemon.wait_log("CORE: executing STOP command...", count=2)


# -- 5. -a -------------------------------------------------------------------------


def test_ack_only_keeps_it_up(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp or tcp", "-a")
    tx = lab.ns.sender()
    for n, (trigger, keep) in enumerate(((tcp4("A"), tcp4("PA")), (tcp6("A"), tcp6("FA")))):
        send(tx, trigger)
        run.wait_events(2 * n + 1)
        last = stream(tx, [keep], every=0.3, duration=2.5)
        assert run.kinds() == ["start", "stop"] * n + ["start"], (
            f"stopped while TCP ACK packets flowed ({'v4' if n == 0 else 'v6'}): {run.events()}"
        )
        run.wait_events(2 * n + 2)
        stop_delta(run, 2 * n + 1, last, 1.0)
    # UDP and SYN-only TCP match the filter but not the ACK test: they do not
    # hold the state up, whatever the rate.
    first = send(tx, udp4())
    run.wait_events(5)
    stream(tx, [udp4(src="10.9.5.1"), tcp4("S"), tcp6("S"), udp6()], every=0.1, duration=3.0,
           until=lambda: len(run.events()) >= 6)
    got = run.wait_events(6)
    assert got[5][0] == "stop", got
    delay = epoch(got[5]) - first.after
    assert epoch(got[5]) - first.before >= 1.0 and delay <= 1.0 + BEAT + SLACK, (
        f"stop {delay:.3f} s after the trigger while non-ACK traffic flowed"
    )


# -- 6. -w, and 9. a tun device ----------------------------------------------------


def test_pcap_file_on_ethernet(lab: Lab) -> None:
    dump = lab.folder / "starts.pcap"
    run = lab.run("-i", "tap0", "-f", "udp", "-w", str(dump))
    tx = lab.ns.sender()
    frames = [udp4(), udp6(vlan=3)]
    for n, frame in enumerate(frames):
        send(tx, frame)
        run.wait_events(2 * n + 2)
    got = run.events()
    assert [e[0] for e in got] == ["start", "stop", "start", "stop"], got
    packets = rdpcap(str(dump))
    assert len(packets) == 2
    assert [bytes(p) for p in packets] == frames


def test_tun_device(netns: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]) -> None:
    fd = netns.tun("tun0")
    try:
        dump = tmp_path / "starts.pcap"
        lab = Lab(netns, tmp_path, start_daemon, BEAT)
        run = lab.run("-i", "tun0", "-f", "udp", "-w", str(dump))
        packet = bytes(IP(src=V4_A, dst=V4_B) / UDP(sport=40000, dport=5353) / (b"t" * 24))
        os.write(fd, packet)
        got = run.wait_events(1)
        assert got[0][2:] == ["pcap:tun0", V4_A, V4_B, "UDP"], got
        run.daemon.wait_log("PCAP: start command done")
        assert run.after("PCAP: start command done") == [
            f"|- IPv4 {V4_A} > {V4_B}, NXT_HDR: 0x11 (UDP)"
        ], run.daemon.text()
        assert not any("|- MAC" in line for line in run.daemon.lines()), run.daemon.text()
        records = rdpcap(str(dump))
        assert len(records) == 1
        raw = bytes(records[0])
        # A synthetic Ethernet header, then the packet.
        assert raw[12:14] == b"\x08\x00" and raw[14:] == packet, raw.hex()
        run.wait_events(2)
    finally:
        os.close(fd)


# -- 7. signals --------------------------------------------------------------------


def usr1_block(run: Run, nth: int) -> list[str]:
    run.daemon.proc.send_signal(signal.SIGUSR1)
    run.daemon.wait_log("- current status:", count=nth)
    log = run.daemon.lines()
    at = [i for i, line in enumerate(log) if line == "SIGUSR1 caught:"][nth - 1]
    return log[at : at + 6]


def workers_of(daemon: Daemon) -> list[psutil.Process]:
    return psutil.Process(daemon.pid).children(recursive=True)


def assert_all_gone(ns: Netns, workers: list[psutil.Process]) -> None:
    assert len(workers) >= 2
    alive = [w.pid for w in workers if w.is_running()]
    assert not alive, f"workers left behind: {alive}"
    left = []
    for pid in ns.pids():
        try:
            name = psutil.Process(pid).name()
        except psutil.Error:
            continue
        if name.startswith("tuninetd"):
            left.append((pid, name))
    assert not left, f"tuninetd processes left in the namespace: {left}"


def test_signals_hup_usr1_term(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp", ttl=None)
    head = [
        "SIGUSR1 caught:",
        "- capture engine: pcap, tap0",
        '-- pcap filter: "udp"',
        f"- event path: {run.script}",
        "- TTL: 600 sec.",
    ]
    assert usr1_block(run, 1) == [*head, "- current status: standby (OFF)"]

    run.daemon.proc.send_signal(signal.SIGHUP)
    run.daemon.wait_log("Warning! Tuninetd is already in standby mode")
    assert run.events() == []

    send(lab.ns.sender(), udp4())
    run.wait_events(1)
    run.daemon.wait_log("PCAP: start command done")
    block = usr1_block(run, 2)
    assert block[:5] == head, block
    assert re.fullmatch(
        r"- current status: up \(ON\), time since last captured packet: \d+ sec\.", block[5]
    ), block

    # That stop is handed over at once is tests/unit/test_core.py's to show.
    run.daemon.proc.send_signal(signal.SIGHUP)
    run.daemon.wait_log("SIGHUP caught, switch to standby mode")
    got = run.wait_events(2)
    assert got[1][0] == "stop", got
    run.daemon.wait_log("CORE: executing STOP command...")
    assert "Warning! Tuninetd is already in standby mode" in run.daemon.lines()

    workers = workers_of(run.daemon)
    run.daemon.proc.send_signal(signal.SIGTERM)
    assert run.daemon.proc.wait(10) == 0, run.daemon.text()
    assert_all_gone(lab.ns, workers)


def test_sigint_exits_cleanly_while_up(lab: Lab) -> None:
    run = lab.run("-i", "tap0", "-f", "udp", ttl=None)
    send(lab.ns.sender(), udp4())
    run.wait_events(1)
    run.daemon.wait_log("PCAP: start command done")
    workers = workers_of(run.daemon)
    run.daemon.proc.send_signal(signal.SIGINT)
    assert run.daemon.proc.wait(10) == 0, run.daemon.text()
    assert_all_gone(lab.ns, workers)


# -- 8. the command's environment --------------------------------------------------


def test_command_environment(lab: Lab) -> None:
    # Written aside and renamed: a file that exists is complete.
    body = f'env | grep "^TUNINETD_" > "{lab.folder}/env.tmp"; mv "{lab.folder}/env.tmp" ' \
        f'"{lab.folder}/env.$1"'
    run = lab.run("-i", "tap0", "-f", "udp", body=body)
    send(lab.ns.sender(), udp4())
    run.wait_events(2)

    def env(event: str) -> dict[str, str]:
        path = lab.folder / f"env.{event}"
        text: str = wait_for(f"the environment of {event}",
                             lambda: path.read_text() if path.exists() else None)
        return dict(line.split("=", 1) for line in text.splitlines())

    start, stop = env("start"), env("stop")
    assert {k: start.get(k) for k in ("TUNINETD_EVENT", "TUNINETD_SENSOR", "TUNINETD_TTL",
                                      "TUNINETD_SRC", "TUNINETD_DST", "TUNINETD_PROTO")} == {
        "TUNINETD_EVENT": "start", "TUNINETD_SENSOR": "pcap:tap0", "TUNINETD_TTL": "1",
        "TUNINETD_SRC": V4_A, "TUNINETD_DST": V4_B, "TUNINETD_PROTO": "UDP",
    }, start
    assert stop["TUNINETD_EVENT"] == "stop", stop
    assert stop["TUNINETD_SENSOR"] == "pcap:tap0", stop
    assert stop["TUNINETD_TTL"] == "1", stop
    assert not {"TUNINETD_SRC", "TUNINETD_DST", "TUNINETD_PROTO"} & stop.keys(), stop


# -- 10. two interfaces ------------------------------------------------------------


def test_two_interfaces(lab: Lab) -> None:
    lab.ns.add_veth("tap1", "peer1")
    run = lab.run("-i", "tap0", "-i", "tap1", "-f", "udp", sensors=2)
    tx0, tx1 = lab.ns.sender("peer0"), lab.ns.sender("peer1")
    send(tx0, udp4(src="10.9.0.10"))
    run.wait_events(1)
    # Up: traffic on the second interface is activity, not a second start.
    last = stream(tx1, [udp4(src="10.9.0.11")], every=0.3, duration=2.0)
    assert run.kinds() == ["start"], run.events()
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)
    # Down again: the second interface triggers too.
    send(tx1, udp4(src="10.9.0.12"))
    run.wait_events(3)
    run.wait_events(4)
    got = run.events()
    assert [e[0] for e in got] == ["start", "stop", "start", "stop"], got
    assert [e[2:4] for e in got[::2]] == [["pcap:tap0", "10.9.0.10"], ["pcap:tap1", "10.9.0.12"]]
    assert run.daemon.wait_log("PCAP: start command done", count=2)
