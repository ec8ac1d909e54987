"""``--config FILE``: the command line's options as TOML keys.

This module reads the file and checks each key's name and TOML type; the
values themselves, as TOML typed them, go through the same checks as the
command line's (configure.py), which names the key and the line it is on
when one is refused. ``render``
prints an effective configuration back as TOML (``--check-config``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

from tuninetd.supervisor import wording
from tuninetd.supervisor.config import options, probes
from tuninetd.supervisor.config.settings import Settings
from tuninetd.supervisor.errors import UsageError

# key -> TOML type: "str", "int", "number" (int or float), "bool",
# "strings" (list of strings), "ints" (list of integers), "argv" (non-empty
# list of strings). The key is also the argparse dest of its option.
KEYS = options.KEYS

_EXPECTED = {
    "str": "a string",
    "int": "an integer",
    "number": "a number",
    "bool": "true or false",
    "strings": "a list of strings",
    "ints": "a list of integers",
    "argv": "a non-empty list of strings (program and arguments)",
}


@dataclass
class ConfigFile:
    path: str
    lines: dict[str, int] = field(default_factory=dict)  # key -> line number, when found
    # key -> value, of the key's TOML type (argv lists as tuples)
    values: dict[str, Any] = field(default_factory=dict)

    def where(self, key: str) -> str:
        line = self.lines.get(key)
        return f"{self.path}, line {line}" if line else self.path


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return "a date or time"


def _convert(kind: str, value: Any) -> Any:
    """The value, when it is of the key's TOML type; None when it is not."""

    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if kind == "str" and isinstance(value, str):
        return value
    if kind == "int" and is_int(value):
        return value
    if kind == "number" and (is_int(value) or isinstance(value, float)):
        return value
    if kind == "bool" and isinstance(value, bool):
        return value
    if isinstance(value, list):
        if kind == "strings" and all(isinstance(v, str) for v in value):
            return list(value)
        if kind == "ints" and all(is_int(v) for v in value):
            return list(value)
        if kind == "argv" and value and all(isinstance(v, str) for v in value):
            return tuple(value)
    return None


def _key_lines(text: str) -> dict[str, int]:
    """Where each top-level key is set (tomllib reports lines only for syntax errors)."""
    found: dict[str, int] = {}
    pattern = re.compile(r"""^\s*(?:\[\s*)?(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*[.=\]]""")
    for number, line in enumerate(text.splitlines(), 1):
        m = pattern.match(line)
        if m:
            found.setdefault(m[1] or m[2] or m[3], number)
    return found


def load(path: str) -> ConfigFile:
    # Imported here: a daemon started without --config never needs them.
    import tomllib

    probes.config_file(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise UsageError(
            f"--config {path!r}: {(exc.strerror or str(exc)).lower()}"
        ) from None
    try:
        text = raw.decode()
        data = tomllib.loads(text)
    except UnicodeDecodeError:
        raise UsageError(f"--config {path!r}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise UsageError(f"{path}: not valid TOML: {exc}") from None
    result = ConfigFile(path, _key_lines(text))
    for key, value in data.items():
        kind = KEYS.get(key)
        if kind is None:
            raise UsageError(f"{result.where(key)}: unknown key {key!r}{_hint(key)}")
        converted = _convert(kind, value)
        if converted is None:
            raise UsageError(
                f"{result.where(key)}: {key}: expected {_EXPECTED[kind]}, got {_type_name(value)}"
            )
        if _has_nul(converted):
            # The C library would cut the value at the NUL: a path, user name
            # or filter that is not the one written.
            raise UsageError(f"{result.where(key)}: {key}: contains a NUL byte (\\0); "
                             "remove it")
        result.values[key] = converted
    return result


def _has_nul(value: Any) -> bool:
    if isinstance(value, str):
        return "\0" in value
    return isinstance(value, list | tuple) and any(_has_nul(v) for v in value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(value)  # a JSON string is a valid TOML basic string


def effective(cfg: Settings) -> dict[str, Any]:
    """Every key with the value in force (None: not set)."""
    return {o.key: o.shown(cfg) for o in options.OPTIONS if o.in_file}


def _hint(key: str) -> str:
    """The key meant: the long name of a flag ("t" is ttl), or a near spelling."""
    if (long := options.BY_FLAG.get(key.lstrip("-"))) is not None:
        return f" (did you mean {long!r}? keys are the long names of the options)"
    import difflib

    close = difflib.get_close_matches(key, KEYS, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def render(cfg: Settings) -> str:
    """The effective configuration as a TOML file ``--config`` takes back,
    then, as comments, what each sensor starts on and what keeps it up: the
    expressions libpcap compiled and the size of each program."""
    lines = ["# tuninetd: effective configuration"]
    for key, value in effective(cfg).items():
        if value is None:
            lines.append(f"# {key} (not set)")
        else:
            lines.append(f"{key} = {_toml(value)}")
    lines.append("")
    lines += [f"# {line}" for line in wording.sensing_lines(cfg)]
    return "\n".join(lines) + "\n"
