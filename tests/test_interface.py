"""An interface that disappears is waited for; capture resumes when it is back."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from tests.support.netlab import Daemon, Netns, events, ready, recorder, wait_for, worker, workers
from tests.support.timing import BEAT

pytestmark = pytest.mark.root

FRAME = bytes(
    Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    / IP(src="10.88.0.1", dst="10.88.0.2")
    / UDP(sport=4000, dport=5353)
    / b"x"
)


def sensor_title(d: Daemon) -> str:
    return next((t for t in workers(d.pid).values() if t.startswith("tuninetd: sensor pcap")), "")


def starts(record: Path) -> int:
    return sum(1 for e in events(record) if e[0] == "start")


def recreate(ns: Netns) -> None:
    ns.ip("link", "del", "tap0")
    ns.add_veth()


@pytest.mark.parametrize("while_up", [False, True], ids=["while-down", "while-up"])
def test_capture_resumes_after_the_interface_is_recreated(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon], while_up: bool
) -> None:
    script, record = recorder(tmp_path)
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "-t", "1",
                     "--beat", str(BEAT))
    ready(d)
    if while_up:
        veth.sender().send(FRAME)
        wait_for("start", lambda: starts(record) == 1)
    sensor_pid = worker(d, "tuninetd: sensor pcap tap0")

    veth.ip("link", "del", "tap0")
    d.wait_log("waiting for interface")
    assert "waiting for interface" in sensor_title(d)
    if while_up:
        # No traffic can arrive: the ttl runs out and stop fires as usual.
        wait_for("stop", lambda: [e[0] for e in events(record)] == ["start", "stop"])

    veth.add_veth()
    d.wait_log("capturing again")
    wait_for("sensor armed", lambda: sensor_title(d).rstrip().endswith("armed"))
    veth.sender().send(FRAME)
    wait_for("start after the interface came back", lambda: starts(record) == 1 + while_up)
    # The same sensor process rebound its socket: no crash, no restart.
    assert psutil.pid_exists(sensor_pid)
    assert "restarting" not in d.text()
    assert d.text().count("waiting for interface") == 1


def test_interface_flapping_does_not_flood_the_log(
    veth: Netns, tmp_path: Path, start_daemon: Callable[..., Daemon]
) -> None:
    script, record = recorder(tmp_path)
    d = start_daemon(veth, "-i", "tap0", "-f", "udp", "-c", str(script), "--beat", str(BEAT))
    ready(d)
    for _ in range(5):
        veth.ip("link", "del", "tap0")
        d.wait_log("waiting for interface", count=1)
        veth.add_veth()
    wait_for("sensor armed", lambda: sensor_title(d).rstrip().endswith("armed"))
    veth.sender().send(FRAME)
    wait_for("start", lambda: starts(record) == 1)
    assert len(d.lines()) < 40, d.text()
