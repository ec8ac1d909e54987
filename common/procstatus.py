"""``/proc/<pid>/status``, read as fields, and its capability masks."""

from __future__ import annotations


def read(pid: int | str = "self") -> dict[str, str]:
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            fields[key] = value.strip()
    return fields


def capabilities(status: dict[str, str], which: str = "CapEff") -> int | None:
    """A capability set (``CapEff``, ``CapPrm``, ...) as a bit mask; None when absent."""
    text = status.get(which)
    return None if text is None else int(text, 16)


def has_capability(bit: int) -> bool:
    """Whether this process holds capability ``bit`` in its effective set."""
    try:
        return bool((capabilities(read()) or 0) >> bit & 1)
    except (OSError, ValueError):
        return False
