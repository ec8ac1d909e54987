"""``--wait-for-interface``: the -i interfaces that did not exist at startup.

Their sensors run without a capture, titled ``waiting for interface``. The
supervisor looks for each interface once a beat (a read of its link type in
/sys, where the namespace's interfaces are); when one appears, its sensor
gets the filter compiled for that link type and is started anew, capturing.
The sensor itself never looks: it is replaced, the same way whether it
opens its capture socket itself or is handed one.
"""

from __future__ import annotations

from dataclasses import replace

from tuninetd.common.logs import log
from tuninetd.supervisor.config import bpf
from tuninetd.supervisor.config.settings import SensorSpec


class LateInterfaces:
    def __init__(self, specs: tuple[SensorSpec, ...]) -> None:
        self.waiting = {s.label: s for s in specs if s.waiting}
        self.next_look = 0.0

    def deadline(self) -> float | None:
        """When to look next; None once no interface is awaited."""
        return self.next_look if self.waiting else None

    def appeared(self, now: float, every: float) -> list[SensorSpec]:
        """The waiting sensors whose interface is there now, with their
        programs for its link type; at most one look per ``every`` seconds."""
        if not self.waiting or now < self.next_look:
            return []
        self.next_look = now + every
        found = []
        for label, spec in list(self.waiting.items()):
            link = bpf.link_of(spec.name)
            if link is None:
                continue
            programs = {c[0]: c for c in spec.candidates}
            del self.waiting[label]
            if link not in programs:
                log.error("CORE: interface %s appeared with link type %s, which the "
                          "filter does not suit: not capturing on it", spec.name, link)
                continue
            _, prog, keep = programs[link]
            log.info("CORE: interface %s appeared (link type %s): capture starts",
                     spec.name, link)
            found.append(replace(spec, link=link, bpf=prog, bpf_keep=keep, candidates=()))
        return found
