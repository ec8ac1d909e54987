"""Hypothesis strategies for what a compromised or broken sensor may send:
records the supervisor must refuse (``MALFORMED``: not JSON, wrong version,
unknown type, wrong or missing or extra fields, too long, too many, out of
range, oversized, nested too deep, an empty record), and ``HARMLESS`` valid
beats. Used by tests/test_faults.py (through a fake sensor, against the real
supervisor) and tests/unit/test_wire_fuzz.py (against ``wire.parse``)."""

from __future__ import annotations

import base64
import json
from typing import Any

from hypothesis import strategies as st

from tuninetd.common import wire


def obj(kind: str, **fields: Any) -> bytes:
    """A record as a sensor would encode it (no size check)."""
    return json.dumps({"v": wire.VERSION, "t": kind, **fields}).encode()


def valid(record: bytes) -> bool:
    """What the supervisor takes from a sensor (cut where it cuts)."""
    try:
        wire.parse(record[: wire.MAX_MESSAGE + 1], wire.SENSOR_MESSAGES)
    except wire.ProtocolError:
        return False
    return True


def _invalid(s: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return s.filter(lambda b: not valid(b))


JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
_NOT_INT = st.one_of(st.text(max_size=5), st.floats(), st.none(), st.booleans(),
                     st.lists(st.integers(), max_size=2))
_SAMPLES = [
    b'{"v":1,"t":"beat","n":NaN}',
    b'{"v":1,"t":"beat","n":1e999}',
    b'{"v":1,"t":"\xff\xfe"}',
    b"\x00" * 64,
    obj("beat"),  # no count
    obj("trigger", lines=["x"]),  # no link
    obj("trigger", link="raw"),  # no lines
    obj("trigger", lines=["x" * (wire.MAX_TEXT + 1)], link="raw"),
    obj("trigger", lines=["x"] * (wire.MAX_LINES + 1), link="raw"),
    obj("trigger", lines=[1, 2], link="raw"),
    obj("trigger", lines=["x"], link="raw", src="y" * (wire.MAX_TEXT + 1)),
    # These three pass the schema; the supervisor refuses them when it reads them.
    obj("trigger", lines=["x"], link="ppp"),
    obj("trigger", lines=["x"], link="raw", pkt="!!not base64!!"),
    obj("trigger", lines=["x"], link="raw", pkt=base64.b64encode(bytes(wire.SNAPLEN + 1)).decode()),
    obj("error"),
    obj("hello"),
    obj("hello", pid="1"),
]
MALFORMED: st.SearchStrategy[bytes] = st.one_of(
    _invalid(st.binary(max_size=300)),  # includes b"": the same as a hang-up
    _invalid(JSON.map(lambda v: json.dumps(v).encode())),
    st.sampled_from(_SAMPLES),
    _invalid(st.one_of(st.integers(), st.text(max_size=3), st.none(), st.floats())
             .map(lambda v: json.dumps({"v": v, "t": "beat", "n": 0}).encode())),
    st.text(max_size=12).filter(lambda t: t not in wire.SENSOR_MESSAGES).map(obj),
    _NOT_INT.map(lambda n: obj("beat", n=n)),
    st.sampled_from([-1, -(2**70), 2**63, 2**200]).map(lambda n: obj("beat", n=n)),
    st.text(min_size=1, max_size=8).filter(lambda k: k not in ("v", "t", "n", "mode"))
    .map(lambda k: obj("beat", n=0, **{k: 1})),
    # Oversized: past MAX_MESSAGE the record is cut there, and refused.
    st.integers(1, 20_000).map(lambda extra: obj("beat", n=0, mode="m" * (wire.MAX_MESSAGE
                                                                             + extra))),
    # Nested deeper than the JSON parser's recursion limit, within the size limit.
    st.integers(2_000, 60_000).map(lambda depth: b"[" * depth + b"]" * depth),
)
HARMLESS: st.SearchStrategy[bytes] = st.integers(0, 100).map(
    lambda n: obj("beat", n=n, mode="counting"))
