"""``wire.parse`` against what a worker may send: every record built bad
(tests/support/garbage.py, one broken rule per family) is refused for that reason,
and whatever bytes come, parse returns a message of the schema or raises
ProtocolError: nothing else can escape into the supervisor's loop."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tests.support.garbage import HARMLESS, MALFORMED, Schema, families
from tuninetd.common import wire

SCHEMAS = {"sensor": wire.SENSOR_MESSAGES, "executor": wire.EXECUTOR_MESSAGES}
FAMILIES = [(role, name) for role, schema in SCHEMAS.items() for name in families(schema)]
JSON: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
FUZZ = settings(max_examples=60, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def refusal(record: bytes, schema: Schema) -> str:
    """Why parse refuses ``record`` (cut where the supervisor's recv cuts)."""
    try:
        msg = wire.parse(record[: wire.MAX_MESSAGE + 1], schema)
    except wire.ProtocolError as exc:
        return str(exc)
    raise AssertionError(f"accepted {record[:200]!r}: {msg!r}")


@pytest.mark.parametrize(("role", "family"), FAMILIES, ids=[f"{r}-{f}" for r, f in FAMILIES])
@FUZZ
@given(data=st.data())
def test_every_bad_record_is_refused_for_its_reason(role: str, family: str,
                                                    data: st.DataObject) -> None:
    strategy, reason = families(SCHEMAS[role])[family]
    record = data.draw(strategy)
    why = refusal(record, SCHEMAS[role])
    assert re.search(reason, why), f"{family}: refused, but for {why!r}"


@FUZZ
@given(record=st.one_of(st.binary(max_size=400), MALFORMED, HARMLESS,
                        JSON.map(lambda v: json.dumps(v).encode())))
@example(record=b'{"v": true, "t": "beat", "n": 0}')
@example(record=b'{"v": 1.0, "t": "beat", "n": 0}')
def test_parse_returns_a_message_or_raises_protocol_error(record: bytes) -> None:
    for schema in SCHEMAS.values():
        try:
            msg = wire.parse(record[: wire.MAX_MESSAGE + 1], schema)
        except wire.ProtocolError:
            continue
        assert msg == json.loads(record), "parse changed what it took"
        assert conforms(msg, schema), msg


def conforms(msg: dict[str, Any], schema: Schema) -> bool:
    """The protocol's rules, said again independently of ``parse``: the
    version, a known type, its required fields, and each field of the type
    the schema lists (a bool only where bool is listed)."""
    fields = schema.get(msg.get("t"), {})  # type: ignore[arg-type]
    body = {k: v for k, v in msg.items() if k not in ("v", "t")}
    return (msg.get("v") == wire.VERSION and type(msg.get("v")) is int
            and msg.get("t") in schema
            and wire.REQUIRED.get(msg["t"], frozenset()) <= body.keys()
            and all(name in fields and type(value) in fields[name]
                    for name, value in body.items()))


@given(record=HARMLESS)
def test_harmless_beats_are_valid(record: bytes) -> None:
    """The fault test sends these between bad records; they must pass."""
    assert wire.parse(record, wire.SENSOR_MESSAGES)["t"] == "beat"


def test_json_nested_too_deep_is_a_protocol_error() -> None:
    """Found by the fault tests: json.loads raises RecursionError, not
    ValueError, and that used to escape from the supervisor's loop."""
    assert "nested too deep" in refusal(b"[" * 50_000 + b"]" * 50_000, wire.SENSOR_MESSAGES)
