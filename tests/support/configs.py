"""Settings for tests that start the real arbiter without a command line:
the option table's defaults for every field a test does not give."""

from __future__ import annotations

from typing import Any

from tuninetd.supervisor.config.options import OPTIONS
from tuninetd.supervisor.config.settings import Settings

# Fields with no row of their own: -i and -n are the sensors; argv lists empty.
_NOT_FROM_A_ROW = {"interfaces", "groups"}


def settings(**given: Any) -> Settings:
    defaults: dict[str, Any] = {"start_command": (), "stop_command": ()}
    for o in OPTIONS:
        if o.in_file and o.key not in _NOT_FROM_A_ROW:
            defaults.setdefault(o.field or o.key, o.default)
    return Settings(**{**defaults, **given})
