"""Bad records, built bad: what a compromised or broken worker may send.

Each family breaks one rule of the wire protocol (common/wire.py) by
construction, starting from a valid record where it can, so no record is
chosen by asking the code under test. ``families(schema)`` maps a family's
name to its strategy and to the words ``wire.parse``'s refusal must contain;
tests/unit/test_wire_fuzz.py asserts that parse refuses every record of every
family, for that reason, and tests/test_faults.py sends them through a fake
sensor to the real supervisor.

``AFTER_PARSE`` holds triggers that are well formed but carry what the
supervisor refuses when it reads them (a link type or packet it cannot use);
``before_hello`` and ``HELLO_AGAIN`` are bad by their place in the sequence.
``HARMLESS`` are valid beats.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

from hypothesis import strategies as st

from tuninetd.common import wire

Fields = dict[str, tuple[type, ...]]
Schema = dict[str, Fields]
# (kind, its fields) -> strategy for one field to set: its name and value.
Change = Callable[[str, Fields], st.SearchStrategy[tuple[str, Any]]]
Family = tuple[st.SearchStrategy[bytes], str]


def obj(kind: str, **fields: Any) -> bytes:
    """A record as a worker would encode it (no size check)."""
    return json.dumps({"v": wire.VERSION, "t": kind, **fields}).encode()


def _record(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields).encode()


# JSON values by the Python type json.loads gives them. bool is its own
# category: it is an int subclass, but the protocol takes it only where bool
# is listed.
_CATEGORIES: dict[type, st.SearchStrategy[Any]] = {
    type(None): st.none(),
    bool: st.booleans(),
    int: st.integers(),
    float: st.floats(),  # NaN and infinities included: json writes them, json.loads reads them
    str: st.text(max_size=5),
    list: st.lists(st.integers(), max_size=2),
    dict: st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
}


def _valid_value(name: str, allowed: tuple[type, ...]) -> st.SearchStrategy[Any]:
    """A value the protocol takes for field ``name``."""
    if name == "n":
        return st.integers(0, 2**63 - 1)
    if allowed[0] is str:
        return st.text(max_size=20)
    return _CATEGORIES[allowed[0]]


def _valid(schema: Schema, kind: str) -> st.SearchStrategy[dict[str, Any]]:
    """A valid message of ``kind``: its required fields, with valid values."""
    fields = schema[kind]
    required = sorted(wire.REQUIRED.get(kind, frozenset()))
    return st.fixed_dictionaries(
        {"v": st.just(wire.VERSION), "t": st.just(kind),
         **{name: _valid_value(name, fields[name]) for name in required}})


def _valid_any(schema: Schema) -> st.SearchStrategy[dict[str, Any]]:
    return st.sampled_from(sorted(schema)).flatmap(lambda kind: _valid(schema, kind))


def _with_a_field(schema: Schema, bad: Change) -> st.SearchStrategy[bytes]:
    """A valid message with one field set as ``bad`` draws it."""

    @st.composite
    def build(draw: st.DrawFn) -> bytes:
        kind = draw(st.sampled_from(sorted(schema)))
        msg = draw(_valid(schema, kind))
        name, value = draw(bad(kind, schema[kind]))
        msg[name] = value
        return _record(msg)

    return build()


def _wrong_type(kind: str, fields: Fields) -> st.SearchStrategy[tuple[str, Any]]:
    def values(name: str) -> st.SearchStrategy[tuple[str, Any]]:
        wrong = [s for t, s in _CATEGORIES.items() if t not in fields[name]]
        return st.tuples(st.just(name), st.one_of(wrong))

    return st.sampled_from(sorted(fields)).flatmap(values)


def _unknown_field(kind: str, fields: Fields) -> st.SearchStrategy[tuple[str, Any]]:
    return st.tuples(st.text(min_size=1, max_size=8).filter(lambda k: k not in (*fields, "v", "t")),
                     st.integers())


def _texts(fields: Fields) -> list[str]:
    """The text fields with MAX_TEXT as their limit (a packet's limit is past
    the record's: a packet too long is an oversized record)."""
    return sorted(name for name, allowed in fields.items() if allowed == (str,) and name != "pkt")


def _too_long(kind: str, fields: Fields) -> st.SearchStrategy[tuple[str, Any]]:
    """A text field past its limit."""
    return st.tuples(st.sampled_from(_texts(fields)), st.integers(1, 64)).map(
        lambda nx: (nx[0], "x" * (wire.MAX_TEXT + nx[1])))


def families(schema: Schema) -> dict[str, Family]:
    """Every way a record breaks the protocol, one rule per family: the
    strategy, and what parse's refusal must say."""
    counted = {k: f for k, f in schema.items() if "n" in f}
    texty = {k: f for k, f in schema.items() if _texts(f)}
    return {
        # A worker that hung up reads as an empty record.
        "empty": (st.just(b""), "empty record"),
        # No JSON value starts with '#'; whatever follows, it is not JSON.
        "not JSON": (st.binary(max_size=300).map(lambda b: b"#" + b), "not JSON"),
        # A JSON object closes at its last byte: any proper prefix is cut short.
        "cut short": (_valid_any(schema).map(_record).flatmap(
            lambda r: st.integers(1, len(r) - 1).map(lambda n: r[:n])), "not JSON"),
        # Deeper than the parser recurses, within the size limit.
        "nested too deep": (st.integers(20_000, wire.MAX_MESSAGE // 2).map(
            lambda depth: b"[" * depth + b"]" * depth), "nested too deep"),
        # Valid JSON, but no object, or an object without version 1 and a string
        # type. (wire.decode compares v with ==, so 1.0 and true pass as 1: the
        # generator leaves out what equals 1.)
        "not a message": (st.one_of(
            st.one_of(*(s for t, s in _CATEGORIES.items() if t is not dict)).map(
                lambda v: json.dumps(v).encode()),
            st.one_of(*_CATEGORIES.values()).filter(lambda v: v != wire.VERSION).map(
                lambda v: _record({"v": v, "t": "beat", "n": 0})),
            st.just(_record({"t": "beat", "n": 0})),
            st.one_of(*(s for t, s in _CATEGORIES.items() if t is not str)).map(
                lambda t: _record({"v": wire.VERSION, "t": t, "n": 0})),
        ), "not a versioned message"),
        "unknown type": (st.text(max_size=12).filter(lambda t: t not in schema).map(obj),
                         "unknown message type"),
        "missing field": (st.sampled_from(sorted(k for k in schema if wire.REQUIRED.get(k)))
                          .flatmap(lambda kind: st.tuples(
                              _valid(schema, kind),
                              st.sampled_from(sorted(wire.REQUIRED[kind]))))
                          .map(lambda mf: _record({k: v for k, v in mf[0].items()
                                                   if k != mf[1]})), "missing"),
        "wrong type": (_with_a_field(schema, _wrong_type), "wrong type"),
        "unknown field": (_with_a_field(schema, _unknown_field), "unexpected field"),
        "too long": (_with_a_field(texty, _too_long), "too long"),
        "count out of range": (_with_a_field(counted, lambda kind, fields: st.tuples(
            st.just("n"), st.integers(max_value=-1) | st.integers(min_value=2**63))),
            "out of range"),
        # Valid, but padded with JSON whitespace past the size limit.
        "oversized": (st.tuples(_valid_any(schema).map(_record), st.integers(1, 20_000)).map(
            lambda ri: ri[0] + b" " * (wire.MAX_MESSAGE + ri[1] - len(ri[0]))), "exceeds"),
    }


SENSOR_FAMILIES = families(wire.SENSOR_MESSAGES)
MALFORMED: st.SearchStrategy[bytes] = st.one_of(*(s for s, _ in SENSOR_FAMILIES.values()))

# A trigger's facts that a packet could give, each replaced in FORGED_FACTS.
IP_FACTS: dict[str, Any] = {"ip": 4, "src": "192.0.2.1", "dst": "192.0.2.2", "proto": 17}
ETHER_FACTS: dict[str, Any] = {"mac_src": "02:00:00:00:00:01", "mac_dst": "02:00:00:00:00:02",
                               "ethertype": 0x0800, "vid": 7}
# What no packet gives: text where an address, a MAC or a number belongs, out
# of range, or facts that contradict each other. (name, value); None drops it.
FORGED_FACTS: list[tuple[str, Any]] = [
    ("src", "$(touch /etc/x)`id`;reboot"), ("dst", "192.0.2.2\nStarted with pid 1"),
    ("src", "fe80::1%$(reboot)"), ("src", "2001:db8::1"), ("src", "192.000.2.1"),
    ("src", "::ffff:102:304"), ("ip", 5), ("proto", 256), ("proto", -1),
    ("mac_src", "02:00:00:00:00:0G"), ("mac_dst", "02:00:00:00:00:02\n"),
    ("mac_src", "02-00-00-00-00-01"), ("vid", 4096), ("ethertype", 0x10000),
    ("ethertype", 0x0806), ("dst", None), ("mac_dst", None), ("prefix", ""),
    ("prefix", "p" * (wire.MAX_PREFIX + 1)),
]


def forged(name: str, value: Any) -> bytes:
    fields = {"link": "ether", **ETHER_FACTS, **IP_FACTS}
    fields.pop(name) if value is None else fields.update({name: value})
    return obj("trigger", **fields)


# Well formed, refused by the supervisor when it reads the trigger: a link
# type it has no pcap header for, a packet that is not base64, a packet longer
# than the snap length, forged facts, MACs on a raw link.
AFTER_PARSE: st.SearchStrategy[bytes] = st.one_of(
    st.text(max_size=8).filter(lambda link: link not in ("ether", "raw")).map(
        lambda link: obj("trigger", link=link)),
    st.sampled_from(["!!not base64!!", "abc", "a=b="]).map(
        lambda pkt: obj("trigger", link="raw", pkt=pkt)),
    st.integers(1, 64).map(lambda extra: obj(
        "trigger", link="raw", pkt=base64.b64encode(bytes(wire.SNAPLEN + extra)).decode())),
    st.sampled_from(FORGED_FACTS).map(lambda nv: forged(*nv)),
    st.just(obj("trigger", link="raw", **ETHER_FACTS)),
)
# Bad by their place: before hello only hello (or an error) may come, even a
# valid trigger is refused; hello comes once.
BEFORE_HELLO: st.SearchStrategy[bytes] = st.sampled_from(
    [obj("beat", n=5, mode="armed"), obj("trigger", link="raw", **IP_FACTS)])
HELLO_AGAIN = obj("hello", pid=1)
HARMLESS: st.SearchStrategy[bytes] = st.integers(0, 100).map(
    lambda n: obj("beat", n=n, mode="counting"))
