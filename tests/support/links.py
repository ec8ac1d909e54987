"""What the kernel says about a namespace's network devices: ip's view of a
link, its carrier, and the processes holding a tun or tap device open."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from tests.support.netlab import Netns


def link(ns: Netns, dev: str) -> dict[str, Any] | None:
    """``ip -d -s -j link show dev`` (None when there is no such device)."""
    out = ns.ip("-d", "-s", "-j", "link", "show", dev, check=False)
    if out.returncode != 0:
        return None
    info: dict[str, Any] = json.loads(out.stdout)[0]
    return info


def has_carrier(ns: Netns, dev: str) -> bool:
    info = link(ns, dev)
    return info is not None and "LOWER_UP" in info["flags"]


def holders(ns: Netns, dev: str) -> list[int]:
    """Processes in the namespace with ``dev`` open (the kernel names a tun
    file's device in its fdinfo)."""
    found = []
    for pid in ns.pids():
        try:
            for fd in os.listdir(f"/proc/{pid}/fdinfo"):
                if f"iff:\t{dev}\n" in Path(f"/proc/{pid}/fdinfo/{fd}").read_text():
                    found.append(pid)
                    break
        except OSError:
            continue
    return found
