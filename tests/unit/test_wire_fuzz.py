"""Whatever a sensor sends, ``wire.parse`` returns a message of the schema or
raises ProtocolError: nothing else can escape into the supervisor's loop."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.garbage import HARMLESS, JSON, MALFORMED
from tuninetd.common import wire


@settings(max_examples=500, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(record=st.one_of(st.binary(max_size=400), MALFORMED, HARMLESS,
                        JSON.map(lambda v: json.dumps(v).encode())))
def test_parse_returns_a_message_or_raises_protocol_error(record: bytes) -> None:
    for schema in (wire.SENSOR_MESSAGES, wire.EXECUTOR_MESSAGES):
        try:
            msg = wire.parse(record[: wire.MAX_MESSAGE + 1], schema)
        except wire.ProtocolError:
            continue
        assert msg["t"] in schema


def test_json_nested_too_deep_is_a_protocol_error() -> None:
    """Found by the fault tests: json.loads raises RecursionError, not
    ValueError, and that used to escape from the supervisor's loop."""
    try:
        wire.parse(b"[" * 50_000 + b"]" * 50_000, wire.SENSOR_MESSAGES)
    except wire.ProtocolError as exc:
        assert "nested too deep" in str(exc)
    else:
        raise AssertionError("accepted")
