"""The supervisor's check of a trigger's facts (supervisor/facts.py), and
the quoting of the one free text a trigger carries, the NFLOG prefix."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.garbage import ETHER_FACTS, FORGED_FACTS, IP_FACTS, forged
from tuninetd.common import wire
from tuninetd.supervisor import facts, wording


def message(**fields: Any) -> wire.Message:
    return wire.parse(wire.encode("trigger", **fields), wire.SENSOR_MESSAGES)


def test_true_facts_pass() -> None:
    checked = facts.check(message(link="ether", **ETHER_FACTS, **IP_FACTS, prefix="tnd"))
    assert wording.summary(checked) == (
        "|- IPv4 192.0.2.1 > 192.0.2.2, NXT_HDR: 0x11 (UDP)",
        "|- MAC: 02:00:00:00:00:01 > 02:00:00:00:00:02, 802.1Q VID: 7, EtherType: 0x0800 (IPv4)",
        '|- NFLOG prefix: "tnd"',
    )


@pytest.mark.parametrize(("name", "value"), FORGED_FACTS,
                         ids=[f"{n}={v!r}" for n, v in FORGED_FACTS])
def test_forged_facts_are_bad(name: str, value: Any) -> None:
    with pytest.raises(facts.Bad):
        facts.check(wire.parse(forged(name, value), wire.SENSOR_MESSAGES))


def test_macs_on_a_raw_link_are_bad() -> None:
    with pytest.raises(facts.Bad, match="raw"):
        facts.check(message(link="raw", **ETHER_FACTS))


@given(st.text(min_size=1, max_size=wire.MAX_PREFIX))
def test_any_prefix_is_one_printable_line(prefix: str) -> None:
    line = wording.summary(facts.check(message(link="raw", prefix=prefix)))[-1]
    assert all(" " <= c <= "~" for c in line), line
    assert line.startswith('|- NFLOG prefix: "') and line.endswith('"')
    # Unquoted, the body has no bare quote: the prefix cannot close it early.
    body = line[len('|- NFLOG prefix: "'):-1].replace("\\\\", "").replace('\\"', "")
    assert '"' not in body
