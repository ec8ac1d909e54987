"""A trigger packet the whole way to its text: the sensor's facts
(sensors/decode.py), sent and parsed as on the wire, checked by the
supervisor (supervisor/facts.py) and worded (supervisor/wording.py): the log
lines and the start command's TUNINETD_SRC/DST/PROTO."""

from __future__ import annotations

from typing import NamedTuple

from tuninetd.common import wire
from tuninetd.sensors.decode import describe
from tuninetd.supervisor import facts, wording


class Summary(NamedTuple):
    lines: list[str]
    src: str | None
    dst: str | None
    proto: str | None


def summarize(data: bytes, link: str) -> Summary:
    record = wire.encode("trigger", link=link, **describe(data, link))
    checked = facts.check(wire.parse(record, wire.SENSOR_MESSAGES))
    env = wording.command_env("start", "pcap:x", 1, checked)
    return Summary(list(wording.summary(checked)), env.get("TUNINETD_SRC"),
                   env.get("TUNINETD_DST"), env.get("TUNINETD_PROTO"))
