"""A sensor's triggers are not charged to its message allowance: the
contract lets one through per arm the supervisor ordered, and a daemon
brought up and down as fast as it goes (tests/test_faults.py's flapping
run) orders more arms in one window than the allowance has messages. Its
beats still are: a flood of them is cut at the allowance."""

from __future__ import annotations

import pytest

from tests.support.configs import settings
from tuninetd.common import wire
from tuninetd.supervisor import allowance
from tuninetd.supervisor.children import Worker
from tuninetd.supervisor.config.settings import Account
from tuninetd.supervisor.sensor_link import CheckedTrigger, Misbehaved, SensorLink

TRIGGER = {"v": wire.VERSION, "t": "trigger", "link": "raw", "ip": 4, "src": "192.0.2.1",
           "dst": "192.0.2.2", "proto": 17}
BEAT = {"v": wire.VERSION, "t": "beat", "n": 0, "mode": "counting"}
HELLO = {"v": wire.VERSION, "t": "hello", "pid": 1}
NOW = 100.0  # one instant: every message falls in the same window


class Dropped(Worker):
    """A sensor that dropped its privileges (what /proc would say)."""

    def privileges_left(self, uid: int, gid: int) -> list[str]:
        return []


def linked() -> tuple[SensorLink, Worker]:
    cfg = settings(sensors=(), sensor_user=Account("nobody", 65534, 65534))
    w = Dropped("pcap:eth0", "m", {}, wire.SENSOR_MESSAGES, "sensor pcap eth0", pid=4242)
    link = SensorLink(cfg, [w])
    link.receive(w, HELLO, NOW, starting=False)
    return link, w


def test_a_trigger_for_each_arm_is_never_too_many() -> None:
    link, w = linked()
    for _ in range(3 * allowance.MESSAGES):
        assert isinstance(link.receive(w, TRIGGER, NOW, starting=False), CheckedTrigger)
        link.order(w, "arm")


def test_beats_past_the_allowance_are_refused() -> None:
    link, w = linked()
    for _ in range(allowance.MESSAGES - 1):  # the hello was one
        link.receive(w, BEAT, NOW, starting=False)
    with pytest.raises(Misbehaved, match=f"more than {allowance.MESSAGES} messages"):
        link.receive(w, BEAT, NOW, starting=False)


def test_a_second_trigger_without_an_arm_is_still_refused() -> None:
    link, w = linked()
    link.receive(w, TRIGGER, NOW, starting=False)
    with pytest.raises(wire.ProtocolError, match="trigger while not armed"):
        link.receive(w, TRIGGER, NOW, starting=False)
