"""The whole daemon with nflog sensors, on real parts: supervisor, sensors and
executor in a throwaway network namespace, nftables ``log group`` and
iptables-nft ``-j NFLOG`` rules logging what the namespace itself sends, a
recording command.

Every wait polls with a deadline; the few ``time.sleep`` calls only pace a
stream of packets.
"""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import rdpcap

from tests.support import netlab
from tests.support.netlab import (
    Lab,
    LabSetup,
    Netns,
    Sent,
    TapAddresses,
    epoch,
    gone,
    recorder,
    send_udp,
    sensors,
    sh,
    title,
    wait_for,
)
from tests.support.nft_rules import log_rules, nft
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

# Scheduling noise allowed on top of the promised bounds (a small, busy machine).
SLACK = 0.8
V4_LOCAL, V4_PEER = "10.202.0.1", "10.202.0.2"
V6_LOCAL, V6_PEER = "fd00:202::1", "fd00:202::2"
MAC_LOCAL, MAC_PEER = "02:00:00:00:03:01", "02:00:00:00:04:02"
PORT = 9999  # logged by the nflog rules
PCAP_ONLY = 7777  # seen by the pcap sensor only (pcap+nflog test)
BOTH = 8888  # seen by both sensors (pcap+nflog test)


# -- the namespace -----------------------------------------------------------------


def udp_socket(ns: Netns, dst: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    with ns.entered():
        return socket.socket(family, socket.SOCK_DGRAM)


def send_tcp(ns: Netns, flags: str) -> Sent:
    """A hand-made TCP segment (raw socket: through output, logged there)."""
    segment = IP(src=V4_LOCAL, dst=V4_PEER) / TCP(
        sport=4321, dport=PORT, flags=flags, seq=1, ack=1 if "A" in flags else 0
    )
    with ns.entered():
        sock = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with sock:
        before = time.time()
        sock.sendto(bytes(segment), (V4_PEER, 0))
        return Sent(before, time.time())


def stream(send: Callable[[], Sent], every: float, duration: float) -> Sent:
    """Call ``send`` every ``every`` seconds for ``duration`` seconds (the
    sleeps pace the traffic); returns the last send."""
    start = time.monotonic()
    n = 0
    last = send()
    while True:
        n += 1
        due = start + n * every
        if due - start > duration:
            return last
        time.sleep(max(0.0, due - time.monotonic()))
        last = send()


# -- the daemon ----------------------------------------------------------------------


@pytest.fixture
def lab_setup() -> LabSetup:
    """tap0 carries our addresses; the peer addresses resolve to a MAC that is
    nobody's, so what we send is logged on output, crosses to peer0 and is
    dropped there, never leaving the namespace."""
    return LabSetup(tap=TapAddresses(MAC_LOCAL, (V4_LOCAL, V6_LOCAL), MAC_PEER, (V4_PEER, V6_PEER)))


# (run, stop_index, last, ttl): the stop came [ttl, ttl + BEAT + SLACK] after the
# last packet; returns the delays from just before and just after it.
stop_delta = partial(netlab.stop_delta, beat=BEAT, slack=SLACK)


def v4_line(src: str = V4_LOCAL, dst: str = V4_PEER, proto: str = "0x11 (UDP)") -> str:
    return f"|- IPv4 {src} > {dst}, NXT_HDR: {proto}"


# -- 1. nftables log group, IPv4 ---------------------------------------------------


def test_nft_log_group_start_and_stop(lab: Lab) -> None:
    log_rules(lab.ns, f'udp dport {PORT} log group 5 prefix "tnd"')
    run = lab.run("-n", "5")
    run.daemon.wait_log("Start listening nflog-group 5")
    send_udp(lab.ns, V4_PEER, PORT)
    got = run.wait_events(1)
    assert got[0][2:] == ["nflog:5", V4_LOCAL, V4_PEER, "UDP"], got
    run.daemon.wait_log("NFLOG: start command done")
    assert run.after("NFLOG: start command done") == [
        v4_line(), '|- NFLOG prefix: "tnd"'
    ], run.daemon.text()
    last = send_udp(lab.ns, V4_PEER, PORT)  # counted, not a trigger: moves the clock
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)
    run.daemon.wait_log("CORE: executing STOP command...")
    assert run.kinds() == ["start", "stop"]
    assert run.events()[1][2] == "nflog:5"


# -- 2. iptables-nft -j NFLOG, IPv6 --------------------------------------------------


def test_ip6tables_nflog_target_ipv6(lab: Lab) -> None:
    sh(
        *lab.ns.exec_argv("ip6tables", "-A", "OUTPUT", "-p", "udp", "--dport", str(PORT)),
        *("-j", "NFLOG", "--nflog-group", "6", "--nflog-prefix", "v6"),
    )
    listed = nft(lab.ns, "list", "ruleset").stdout
    assert "group 6" in listed, f"not an iptables-nft rule?\n{listed}"
    run = lab.run("-n", "6")
    send_udp(lab.ns, V6_PEER, PORT)
    got = run.wait_events(1)
    assert got[0][2:] == ["nflog:6", V6_LOCAL, V6_PEER, "UDP"], got
    run.daemon.wait_log("NFLOG: start command done")
    assert run.after("NFLOG: start command done") == [
        f"|- IPv6 {V6_LOCAL} > {V6_PEER}, NXT_HDR: 0x11 (UDP)", '|- NFLOG prefix: "v6"'
    ], run.daemon.text()
    run.wait_events(2)
    assert run.kinds() == ["start", "stop"]


# -- 3. -a ---------------------------------------------------------------------------


def test_ack_only_with_nflog(lab: Lab) -> None:
    log_rules(lab.ns, f"tcp dport {PORT} log group 7", f"udp dport {PORT} log group 7")
    run = lab.run("-n", "7", "-a")
    # Any logged packet is a trigger; while up, only TCP ACKs move the clock.
    send_tcp(lab.ns, "S")
    run.wait_events(1)
    flags = itertools.cycle(["A", "PA", "FA"])
    last = stream(lambda: send_tcp(lab.ns, next(flags)), every=0.3, duration=2.5)
    assert run.kinds() == ["start"], f"stopped while TCP ACK packets flowed: {run.events()}"
    run.wait_events(2)
    stop_delta(run, 1, last, 1.0)

    # SYNs, RSTs and UDP are logged to the group but keep nothing up.
    first = send_udp(lab.ns, V4_PEER, PORT)
    run.wait_events(3)
    senders = [lambda: send_tcp(lab.ns, "S"), lambda: send_tcp(lab.ns, "R"),
               lambda: send_udp(lab.ns, V4_PEER, PORT)]
    deadline = time.monotonic() + 1.0 + BEAT + SLACK + 1.0
    n = 0
    while len(run.events()) < 4 and time.monotonic() < deadline:
        senders[n % 3]()
        n += 1
        time.sleep(0.05)
    got = run.wait_events(4)
    assert got[3][0] == "stop", got
    early, late = epoch(got[3]) - first.before, epoch(got[3]) - first.after
    assert early >= 1.0 and late <= 1.0 + BEAT + SLACK, (
        f"stop {late:.3f} s after the trigger while non-ACK traffic flowed"
    )


# -- 4. -w ---------------------------------------------------------------------------


def test_pcap_file_from_nflog(lab: Lab) -> None:
    dump = lab.folder / "starts.pcap"
    log_rules(lab.ns, f"udp dport {PORT} log group 8")
    log_rules(lab.ns, f'iifname "tap0" udp dport {PORT} log group 8', hook="prerouting")
    run = lab.run("-n", "8", "-w", str(dump))
    payloads = [os.urandom(300), os.urandom(1200)]
    # Sent by us (output): no link header, the file gets a synthetic one.
    send_udp(lab.ns, V4_PEER, PORT, data=payloads[0])
    run.wait_events(2)
    send_udp(lab.ns, V6_PEER, PORT, data=payloads[1])
    run.wait_events(4)
    # Came in on tap0 (prerouting): the message carries the real MAC header.
    frame = bytes(Ether(src=MAC_PEER, dst=MAC_LOCAL)
                  / IP(src=V4_PEER, dst=V4_LOCAL) / UDP(sport=1234, dport=PORT) / b"in")
    with lab.ns.sender("peer0") as out:
        out.send(frame)
    run.wait_events(6)
    assert run.kinds() == ["start", "stop"] * 3
    assert run.after("NFLOG: start command done", nth=3) == [
        v4_line(V4_PEER, V4_LOCAL),
        f"|- MAC: {MAC_PEER} > {MAC_LOCAL}, EtherType: 0x0800 (IPv4)",
    ], run.daemon.text()

    records = [bytes(p) for p in rdpcap(str(dump))]
    assert len(records) == 3
    v4, v6, incoming = records
    assert v4[:14] == bytes(12) + b"\x08\x00", v4[:14].hex()
    assert IP(v4[14:]).src == V4_LOCAL and bytes(IP(v4[14:])[UDP].payload) == payloads[0]
    assert v6[:14] == bytes(12) + b"\x86\xdd", v6[:14].hex()
    assert v6[14:][8:24] == socket.inet_pton(socket.AF_INET6, V6_LOCAL)
    assert v6[14:].endswith(payloads[1]) and len(v6) == 14 + 40 + 8 + 1200
    assert incoming == frame, (incoming.hex(), frame.hex())


# -- 5. pcap and nflog together --------------------------------------------------------


def test_pcap_and_nflog_together(lab: Lab) -> None:
    log_rules(lab.ns, f"udp dport {{ {BOTH}, {PORT} }} log group 9")
    flt = f"udp dst port {PCAP_ONLY} or udp dst port {BOTH}"
    run = lab.run("-i", "tap0", "-f", flt, "-n", "9", sensors=2)

    run.daemon.proc.send_signal(signal.SIGUSR1)
    run.daemon.wait_log("- current status:")
    log = run.daemon.lines()
    at = log.index("SIGUSR1 caught:")
    block = log[at : at + 4]
    assert block == [
        "SIGUSR1 caught:",
        "- capture engine: pcap, tap0",
        f'-- pcap filter: "{flt}"',
        "- capture engine: nflog group 9",
    ], log

    # The first sensor to see a packet fires: each one alone.
    send_udp(lab.ns, V4_PEER, PCAP_ONLY)
    got = run.wait_events(2)
    assert got[0][2:] == ["pcap:tap0", V4_LOCAL, V4_PEER, "UDP"], got
    send_udp(lab.ns, V4_PEER, PORT)
    got = run.wait_events(4)
    assert got[2][2:] == ["nflog:9", V4_LOCAL, V4_PEER, "UDP"], got
    run.daemon.wait_log("PCAP: start command done")
    run.daemon.wait_log("NFLOG: start command done")

    # Both see it: one start, by whichever came first; the other is activity.
    send_udp(lab.ns, V4_PEER, BOTH)
    got = run.wait_events(5)
    assert got[4][2] in ("pcap:tap0", "nflog:9"), got

    # nflog alone keeps it up while pcap is silent ...
    last = stream(lambda: send_udp(lab.ns, V4_PEER, PORT), every=0.3, duration=2.0)
    assert run.kinds()[4:] == ["start"], f"stopped while nflog saw packets: {run.events()}"
    # ... and pcap alone while nflog is silent.
    last = stream(lambda: send_udp(lab.ns, V4_PEER, PCAP_ONLY), every=0.3, duration=2.0)
    assert run.kinds()[4:] == ["start"], f"stopped while pcap saw packets: {run.events()}"
    run.wait_events(6)
    stop_delta(run, 5, last, 1.0)
    assert run.kinds() == ["start", "stop"] * 3
    done = [line for line in run.daemon.lines() if line.endswith(": start command done")]
    assert len(done) == 3, run.daemon.text()


# -- 6. two daemons on one group -----------------------------------------------------


def test_second_daemon_on_the_same_group(lab: Lab) -> None:
    log_rules(lab.ns, f"udp dport {PORT} log group 11")
    first = lab.run("-n", "11")
    script, _ = recorder(lab.folder, name="second.sh")
    second = lab.start_daemon(lab.ns, "-c", str(script), "--beat", str(BEAT), "-n", "11")
    assert second.proc.wait(timeout=20) == 1, second.text()
    errors = [line for line in second.lines() if line.startswith("Error: ")]
    assert len(errors) == 1, second.text()
    assert "nflog group 11 is already bound by another process" in errors[0], errors
    assert errors[0].endswith(". Abort"), errors
    # The first one never noticed.
    send_udp(lab.ns, V4_PEER, PORT)
    assert first.wait_events(1)[0][2] == "nflog:11"
    first.daemon.wait_log("NFLOG: start command done")
    trouble = [line for line in first.daemon.lines() if "sensor nflog" in line]
    assert not trouble, first.daemon.text()


# -- 7. a burst while up -------------------------------------------------------------


def test_burst_while_up_keeps_beating_and_quiet(lab: Lab) -> None:
    log_rules(lab.ns, f"udp dport {PORT} log group 12")
    run = lab.run("-n", "12", ttl=2)
    send_udp(lab.ns, V4_PEER, PORT)
    run.wait_events(1)
    run.daemon.wait_log("NFLOG: start command done")
    wait_for("the start summary", lambda: len(run.after("NFLOG: start command done", lines=1)))
    sensor = sensors(run.daemon)["tuninetd: sensor nflog 12"]
    wait_for("the sensor counting", lambda: title(sensor).endswith(" counting"))
    before = run.daemon.lines()

    burst, chunk, least = 100_000, 2_000, 3.0  # lasting longer than ttl + beat
    titles: set[str] = set()
    states: set[str] = set()
    started = time.monotonic()
    last = Sent(0.0, 0.0)
    with udp_socket(lab.ns, V4_PEER) as sock:
        for n in range(burst // chunk):
            for _ in range(chunk - 1):
                sock.sendto(b"b", (V4_PEER, PORT))
            before_last = time.time()
            sock.sendto(b"b", (V4_PEER, PORT))
            last = Sent(before_last, time.time())
            titles.add(title(sensor))
            prefix = f"tuninetd: supervisor {run.daemon.name} "
            states.add(title(run.daemon.pid).removeprefix(prefix).split(" ")[0])
            if n + 1 < burst // chunk:
                time.sleep(max(0.0, started + least * (n + 1) * chunk / burst - time.monotonic()))
    lasted = time.monotonic() - started
    during = run.daemon.lines()

    assert titles == {"tuninetd: sensor nflog 12 counting"}, titles
    assert states == {"up"}, f"supervisor states during the burst: {states}\n{run.daemon.text()}"
    assert run.kinds() == ["start"], f"stopped during the burst: {run.events()}"
    new = [line for line in during[len(before):]
           if not line.startswith(("start: ", "stop: "))]
    assert not new, f"log lines during the burst: {new[:20]}"
    run.wait_events(2, timeout=15)
    early, late = stop_delta(run, 1, last, 2.0)
    assert sensors(run.daemon)["tuninetd: sensor nflog 12"] == sensor, "the sensor was replaced"
    print(f"\n{burst} packets in {lasted:.2f} s; stop {early:.3f}/{late:.3f} s after the burst")


def test_a_packet_a_beat_keeps_it_up_after_a_burst_and_silence_stops_it(lab: Lab) -> None:
    """While up, the sensor reads nothing while packets go by: after a burst
    the kernel keeps a message or two queued and drops the rest. One packet a
    beat from then on, each dropped or queued unread, must keep the daemon up
    through several ttl; the silence after the last must stop it in time."""
    log_rules(lab.ns, f"udp dport {PORT} log group 14")
    ttl = 1
    run = lab.run("-n", "14", ttl=ttl)
    send_udp(lab.ns, V4_PEER, PORT)
    run.wait_events(1)
    sensor = sensors(run.daemon)["tuninetd: sensor nflog 14"]
    wait_for("the sensor counting", lambda: title(sensor).endswith(" counting"))
    send_udp(lab.ns, V4_PEER, PORT, count=2_000)
    last = stream(partial(send_udp, lab.ns, V4_PEER, PORT), every=BEAT, duration=4 * ttl)
    assert run.kinds() == ["start"], f"stopped while a packet came every beat: {run.events()}"
    run.wait_events(2)
    stop_delta(run, 1, last, float(ttl))
    assert sensors(run.daemon)["tuninetd: sensor nflog 14"] == sensor, "the sensor was replaced"


# -- 8. the sensor killed -------------------------------------------------------------


def test_killed_nflog_sensor_is_replaced(lab: Lab) -> None:
    log_rules(lab.ns, f"udp dport {PORT} log group 13")
    run = lab.run("-n", "13")
    send_udp(lab.ns, V4_PEER, PORT)
    run.wait_events(1)
    old = sensors(run.daemon)["tuninetd: sensor nflog 13"]
    os.kill(old, signal.SIGKILL)
    run.daemon.wait_log("CORE: sensor nflog 13 is back")
    assert any(f"sensor nflog 13 (pid {old}) killed by signal 9" in line
               for line in run.daemon.lines()), run.daemon.text()
    assert gone(old)
    new = sensors(run.daemon)["tuninetd: sensor nflog 13"]
    assert new != old
    # Up when it came back: it counts; the state goes down after ttl.
    run.wait_events(2)
    wait_for("the new sensor armed", lambda: title(new).endswith(" armed"))
    send_udp(lab.ns, V6_PEER, PORT)
    got = run.wait_events(3)
    assert got[2][2:] == ["nflog:13", V6_LOCAL, V6_PEER, "UDP"], got
    run.daemon.wait_log("NFLOG: start command done", count=2)
    assert run.kinds() == ["start", "stop", "start"]


# -- the command line ------------------------------------------------------------------


def test_group_out_of_range_is_a_usage_error(tmp_path: Path) -> None:
    script, _ = recorder(tmp_path)
    for bad in ("70000", "65536", "abc"):
        res = subprocess.run(
            [sys.executable, "-m", "tuninetd.supervisor.main", "-n", bad, "-c", str(script)],
            capture_output=True, text=True, timeout=30,
        )
        assert res.returncode == 2, res
        assert f"-n {bad!r}: expected an NFLOG group number from 0 to 65535" in res.stderr, res


def test_two_groups_two_sensor_processes(lab: Lab) -> None:
    log_rules(lab.ns, f"udp dport {PORT} log group 21", f"udp dport {BOTH} log group 22")
    run = lab.run("-n", "21", "-n", "22", sensors=2)
    by_name = sensors(run.daemon)
    assert set(by_name) == {"tuninetd: sensor nflog 21", "tuninetd: sensor nflog 22"}, by_name
    assert {psutil.Process(pid).name() for pid in by_name.values()} == {"tuninetd-nflog"}
    send_udp(lab.ns, V4_PEER, BOTH)
    got = run.wait_events(1)
    assert got[0][2] == "nflog:22", got
    run.wait_events(2)
    send_udp(lab.ns, V4_PEER, PORT)
    got = run.wait_events(3)
    assert got[2][2] == "nflog:21", got
