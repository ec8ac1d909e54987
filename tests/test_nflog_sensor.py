"""The nflog sensor against the real kernel: each test in its own network
namespace, with real nftables / iptables-nft rules logging to a group, the
sensor driven over a socketpair the way the supervisor drives it."""

from __future__ import annotations

import base64
import itertools
import os
import pwd
import secrets
import select
import socket
import subprocess
import sys
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Dot1Q, Ether

from tests.support.netlab import Netns, TapAddresses, proc_status, send_udp, sh
from tests.support.nft_rules import log_rules
from tests.support.timing import BEAT, SILENT_BEATS
from tuninetd.common import wire
from tuninetd.supervisor import facts, wording
from tuninetd.supervisor.sandbox import allowlist

pytestmark = pytest.mark.root

V4_LOCAL, V4_PEER = "10.201.0.1", "10.201.0.2"
V6_LOCAL, V6_PEER = "fd00:201::1", "fd00:201::2"
MAC_LOCAL, MAC_PEER = "02:00:00:00:01:01", "02:00:00:00:02:02"
PORT = 9999


@pytest.fixture
def addressed_ns(veth: Netns) -> Netns:
    """tap0 carries our addresses; the peer addresses resolve to a MAC that is
    nobody's, so what we send is logged on output, crosses to peer0 and is
    dropped there, never leaving the namespace."""
    veth.address_tap(TapAddresses(MAC_LOCAL, (V4_LOCAL, V6_LOCAL), MAC_PEER, (V4_PEER, V6_PEER)))
    return veth


def bridge_peer(ns: Netns) -> None:
    """Put peer0 in a bridge: what tap0 sends then crosses the bridge."""
    ns.ip("link", "add", "br0", "type", "bridge")
    ns.ip("link", "set", "peer0", "master", "br0")
    ns.ip("link", "set", "br0", "up")


def send_ip(ns: Netns, packet: bytes, count: int = 1) -> None:
    """A hand-made IPv4 packet, sent as it is (raw socket: through output)."""
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with sock:
        for _ in range(count):
            sock.sendto(packet, (V4_PEER, 0))


class Sensor:
    """One sensor process and the supervisor's end of its socketpair."""

    def __init__(self, ns: Netns, group: int, beat: float = BEAT, **options: bool) -> None:
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        # ip netns exec execs in place: the sensor is our child, as under the
        # supervisor, and its parent pid is ours.
        self.proc = subprocess.Popen(
            ns.exec_argv(
                *(sys.executable, "-m", "tuninetd.sensors.nflog"),
                *(str(theirs.fileno()), str(os.getpid())),
            ),
            pass_fds=[theirs.fileno()],
            stderr=subprocess.PIPE,
        )
        channel = theirs.fileno()
        theirs.close()
        nobody = pwd.getpwnam("nobody")
        wire.send(
            self.sock,
            "config",
            kind="nflog",
            name=str(group),
            group=group,
            uid=nobody.pw_uid,
            gid=nobody.pw_gid,
            beat=beat,
            want_packet=options.get("want_packet", False),
            ack_only=options.get("ack_only", False),
            seccomp=allowlist.build(channel),  # the product's, for the fd it has here
        )

    def recv(self, timeout: float = 5.0) -> wire.Message:
        ready, _, _ = select.select([self.sock], [], [], timeout)
        assert ready, "no message from the sensor"
        data = wire.recv(self.sock)
        assert data, "the sensor closed its socket"
        return wire.parse(data, wire.SENSOR_MESSAGES)

    def hello(self) -> None:
        msg = self.recv()
        assert msg["t"] == "hello", msg
        assert msg["pid"] == self.proc.pid

    def expect(self, kind: str, timeout: float = 5.0) -> wire.Message:
        """The next message that is not a beat; beats meanwhile must say nothing happened."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            if msg["t"] != "beat":
                assert msg["t"] == kind, msg
                return msg
            assert msg["n"] == 0, msg

    def beat(self, mode: str) -> wire.Message:
        """The next beat in ``mode``, which then is in effect; nothing but beats."""
        deadline = time.monotonic() + 5.0
        while True:
            msg = self.recv(max(0.0, deadline - time.monotonic()))
            assert msg["t"] == "beat", msg
            if msg["mode"] == mode:
                return msg

    def order(self, verb: str) -> None:
        wire.send(self.sock, verb)

    def stop(self) -> bytes:
        """Hang up as a dying supervisor would; what the sensor wrote to stderr."""
        self.sock.close()
        _out, err = self.proc.communicate(timeout=5)
        assert self.proc.returncode == 0
        return err


def lines(trig: wire.Message) -> list[str]:
    """What the supervisor logs for the trigger: its facts, checked and worded."""
    return list(wording.summary(facts.check(trig)))


def _group() -> int:
    return secrets.randbelow(65535) + 1


def test_ipv4_trigger_from_nft_rule_with_prefix(addressed_ns: Netns) -> None:
    group = _group()
    log_rules(addressed_ns, f"udp dport {PORT} log group {group} prefix tnd")
    sensor = Sensor(addressed_ns, group)
    sensor.hello()
    send_udp(addressed_ns, V4_PEER, PORT)
    trig = sensor.expect("trigger")
    assert lines(trig) == [f"|- IPv4 {V4_LOCAL} > {V4_PEER}, NXT_HDR: 0x11 (UDP)",
                           '|- NFLOG prefix: "tnd"']
    assert trig["prefix"] == "tnd"
    assert trig["link"] == "raw"
    assert "pkt" not in trig
    # Fired once, and counting without being told.
    assert sensor.beat("counting")


def test_ipv6_trigger(addressed_ns: Netns) -> None:
    group = _group()
    log_rules(addressed_ns, f"udp dport {PORT} log group {group}")
    sensor = Sensor(addressed_ns, group)
    sensor.hello()
    send_udp(addressed_ns, V6_PEER, PORT)
    trig = sensor.expect("trigger")
    assert lines(trig) == [f"|- IPv6 {V6_LOCAL} > {V6_PEER}, NXT_HDR: 0x11 (UDP)"]
    assert (trig["ip"], trig["src"], trig["dst"], trig["proto"]) == (6, V6_LOCAL, V6_PEER, 17)
    assert "prefix" not in trig


def test_trigger_from_iptables_nflog_target(addressed_ns: Netns) -> None:
    group = _group()
    sh(
        *addressed_ns.exec_argv("iptables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT)),
        *("-j", "NFLOG", "--nflog-group", str(group), "--nflog-prefix", "ipt"),
    )
    sensor = Sensor(addressed_ns, group)
    sensor.hello()
    send_udp(addressed_ns, V4_PEER, PORT)
    trig = sensor.expect("trigger")
    assert lines(trig) == [f"|- IPv4 {V4_LOCAL} > {V4_PEER}, NXT_HDR: 0x11 (UDP)",
                           '|- NFLOG prefix: "ipt"']
    assert trig["prefix"] == "ipt"


def test_incoming_frame_gives_mac_line(addressed_ns: Netns) -> None:
    """A packet that came in on an Ethernet device carries its link header."""
    group = _group()
    log_rules(addressed_ns, f'iifname "tap0" udp dport {PORT} log group {group}', hook="prerouting")
    sensor = Sensor(addressed_ns, group)
    sensor.hello()
    frame = Ether(src=MAC_PEER, dst=MAC_LOCAL)
    frame /= IP(src=V4_PEER, dst=V4_LOCAL) / UDP(sport=1234, dport=PORT)
    with addressed_ns.sender("peer0") as out:
        out.send(bytes(frame))
    trig = sensor.expect("trigger")
    assert trig["link"] == "ether"
    assert lines(trig) == [
        f"|- IPv4 {V4_PEER} > {V4_LOCAL}, NXT_HDR: 0x11 (UDP)",
        f"|- MAC: {MAC_PEER} > {MAC_LOCAL}, EtherType: 0x0800 (IPv4)",
    ]


def test_bridge_family_trigger(addressed_ns: Netns) -> None:
    group = _group()
    bridge_peer(addressed_ns)
    rule = f"udp dport {PORT} log group {group} prefix br"
    log_rules(addressed_ns, rule, hook="prerouting", family="bridge")
    sensor = Sensor(addressed_ns, group)
    sensor.hello()
    send_udp(addressed_ns, V4_PEER, PORT)
    trig = sensor.expect("trigger")
    assert trig["link"] == "ether"
    assert trig["prefix"] == "br"
    assert lines(trig) == [
        f"|- IPv4 {V4_LOCAL} > {V4_PEER}, NXT_HDR: 0x11 (UDP)",
        f"|- MAC: {MAC_LOCAL} > {MAC_PEER}, EtherType: 0x0800 (IPv4)",
        '|- NFLOG prefix: "br"',
    ]


def test_bridge_vlan_tag_is_put_back(addressed_ns: Netns) -> None:
    """The kernel moves the 802.1Q tag into metadata; the trigger shows it."""
    group = _group()
    bridge_peer(addressed_ns)
    log_rules(addressed_ns, f"vlan id 5 log group {group}", hook="prerouting", family="bridge")
    sensor = Sensor(addressed_ns, group, want_packet=True)
    sensor.hello()
    frame = Ether(src=MAC_LOCAL, dst=MAC_PEER) / Dot1Q(vlan=5)
    frame /= IP(src=V4_LOCAL, dst=V4_PEER) / UDP(sport=1234, dport=PORT)
    with addressed_ns.sender("tap0") as out:
        out.send(bytes(frame))
    trig = sensor.expect("trigger")
    assert lines(trig) == [
        f"|- IPv4 {V4_LOCAL} > {V4_PEER}, NXT_HDR: 0x11 (UDP)",
        f"|- MAC: {MAC_LOCAL} > {MAC_PEER}, 802.1Q VID: 5, EtherType: 0x0800 (IPv4)",
    ]
    assert base64.b64decode(trig["pkt"]) == bytes(frame)


def test_want_packet_sends_the_whole_packet(addressed_ns: Netns) -> None:
    group = _group()
    log_rules(addressed_ns, f"udp dport {PORT} log group {group}")
    sensor = Sensor(addressed_ns, group, want_packet=True)
    sensor.hello()
    payload = secrets.token_bytes(1400)
    send_udp(addressed_ns, V4_PEER, PORT, data=payload)
    trig = sensor.expect("trigger")
    packet = IP(base64.b64decode(trig["pkt"]))
    assert (packet.src, packet.dst) == (V4_LOCAL, V4_PEER)
    assert bytes(packet[UDP].payload) == payload


def test_burst_while_counting_keeps_beating(addressed_ns: Netns) -> None:
    group, beat, burst = _group(), BEAT, 150_000
    log_rules(addressed_ns, f"udp dport {PORT} log group {group}")
    sensor = Sensor(addressed_ns, group, beat=beat)
    sensor.hello()
    sensor.order("count")
    sensor.beat("counting")
    send_udp(addressed_ns, V4_PEER, PORT, count=burst)
    beats = [sensor.beat("counting")]
    arrivals = [time.monotonic()]
    # The burst is over; a couple more beats take in what was still queued.
    while len(beats) < 3 or beats[-1]["n"]:
        beats.append(sensor.beat("counting"))
        arrivals.append(time.monotonic())
        assert len(beats) < 200, "the counts never went back to zero"
    # Counting reads the socket's counters (a minimal buffer, nothing read):
    # the burst shows as activity in the beat that covers it. What it costs
    # the sensor is a benchmark figure: bench's cost section, as a ratio to
    # tcpdump's in the same run.
    assert beats[0]["n"] >= 1 or beats[1]["n"] >= 1
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    # Correctness: a sensor silent for SILENT_BEATS beats is killed as frozen.
    assert max(gaps) < SILENT_BEATS * beat, gaps
    assert sensor.stop() == b""


def test_ack_only_counts_tcp_ack_packets(addressed_ns: Netns) -> None:
    group = _group()
    log_rules(addressed_ns, f"tcp dport {PORT} log group {group}")
    sensor = Sensor(addressed_ns, group, ack_only=True)
    sensor.hello()
    sensor.order("count")
    sensor.beat("counting")
    for flags, count in (("S", 5), ("A", 7), ("SA", 3), ("R", 4), ("FA", 2)):
        segment = IP(src=V4_LOCAL, dst=V4_PEER) / TCP(sport=4321, dport=PORT, flags=flags)
        send_ip(addressed_ns, bytes(segment), count)
    total, deadline = 0, time.monotonic() + 5
    while total < 12 and time.monotonic() < deadline:
        total += sensor.beat("counting")["n"]
    # Anything miscounted would have shown up by the next beats.
    total += sensor.beat("counting")["n"] + sensor.beat("counting")["n"]
    assert total == 12


def counting(addressed_ns: Netns, beat: float) -> Sensor:
    """A sensor on a fresh group that logs UDP to PORT, told to count, and counting."""
    group = _group()
    log_rules(addressed_ns, f"udp dport {PORT} log group {group}")
    sensor = Sensor(addressed_ns, group, beat=beat)
    sensor.hello()
    sensor.order("count")
    sensor.beat("counting")
    return sensor


def test_arm_fires_on_packets_since_the_last_beat(addressed_ns: Netns) -> None:
    # A long beat: the packet and the arm land between two beats.
    sensor = counting(addressed_ns, beat=2.0)
    send_udp(addressed_ns, V6_PEER, PORT)
    sensor.order("arm")
    msg = sensor.recv(timeout=1.0)
    assert msg["t"] == "trigger", msg
    assert lines(msg) == [f"|- IPv6 {V6_LOCAL} > {V6_PEER}, NXT_HDR: 0x11 (UDP)"]


def activity(sensor: Sensor, within: float = 1.0) -> int:
    """The count of the first beat within ``within`` seconds that saw a packet."""
    deadline = time.monotonic() + within
    while True:
        msg = sensor.beat("counting")
        if msg["n"]:
            return int(msg["n"])
        assert time.monotonic() < deadline, "no beat counted the packet"


def counting_after_a_burst(addressed_ns: Netns) -> Sensor:
    """A sensor counting, with a long beat (the asked-for reports, not the
    clock, take the counts), that has just reported a burst: the kernel holds
    a message or two of it, unread, and dropped the rest."""
    sensor = counting(addressed_ns, beat=5.0)
    send_udp(addressed_ns, V4_PEER, PORT, count=500)
    sensor.order("report")
    assert activity(sensor) >= 2  # the queue's growth, and the drops
    return sensor


def test_single_packets_count_with_or_without_a_full_queue(addressed_ns: Netns) -> None:
    """Counting reads nothing while packets go by: the next packet after a
    burst (dropped too) must count, as must one into the queue emptied by a
    quiet beat."""
    sensor = counting_after_a_burst(addressed_ns)
    for quiet_between in (False, False, True, True):
        send_udp(addressed_ns, V4_PEER, PORT)
        sensor.order("report")
        assert activity(sensor) == 1
        if quiet_between:
            sensor.order("report")
            assert sensor.beat("counting")["n"] == 0
    assert sensor.stop() == b""


def test_arm_after_a_busy_beat_fires_on_a_new_packet_only(addressed_ns: Netns) -> None:
    """Armed right after a beat that counted a burst (a forced stop): the
    messages still queued from the burst were counted, and must not fire."""
    sensor = counting_after_a_burst(addressed_ns)
    sensor.order("arm")
    sensor.order("report")
    assert sensor.beat("armed")["n"] == 0  # no trigger came first
    send_udp(addressed_ns, V6_PEER, PORT)
    msg = sensor.expect("trigger", timeout=1.0)
    assert lines(msg) == [f"|- IPv6 {V6_LOCAL} > {V6_PEER}, NXT_HDR: 0x11 (UDP)"]
    assert sensor.stop() == b""


def test_second_sensor_on_a_group_gets_a_clear_error(addressed_ns: Netns) -> None:
    group = _group()
    first = Sensor(addressed_ns, group)
    first.hello()
    second = Sensor(addressed_ns, group)
    msg = second.recv()
    assert msg["t"] == "error" and msg["fatal"] is True
    assert f"nflog group {group} is already bound by another process" in msg["reason"]
    assert second.proc.wait(timeout=5) == 1
    # The first one is untouched.
    assert first.beat("armed")


def test_sensor_runs_unprivileged_after_hello(addressed_ns: Netns) -> None:
    sensor = Sensor(addressed_ns, _group())
    sensor.hello()
    status = proc_status(sensor.proc.pid)
    nobody = pwd.getpwnam("nobody")
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4
    assert status["Gid"].split() == [str(nobody.pw_gid)] * 4
    assert status["Groups"] == ""
    for caps in ("CapEff", "CapPrm", "CapBnd"):
        assert int(status[caps], 16) == 0
    assert status["NoNewPrivs"] == "1"
