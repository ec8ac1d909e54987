"""Network interface names, by the kernel's rules (``dev_valid_name``)."""

from __future__ import annotations

IFNAMSIZ = 16  # with the NUL


def problem(name: str) -> str | None:
    """Why the kernel would refuse ``name`` for an interface; None if it would not."""
    size = len(name.encode())
    if size == 0:
        return "expected an interface name, got an empty string"
    if size >= IFNAMSIZ:
        return f"interface name {name!r} is {size} bytes long, at most {IFNAMSIZ - 1}"
    if name in (".", "..") or any(c in name for c in "/:") or any(c.isspace() for c in name):
        return f"{name!r} is not a valid interface name (no '/', ':' or spaces)"
    return None
