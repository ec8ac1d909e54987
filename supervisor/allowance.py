"""How much a sensor may say: its messages and mode changes, per window.

A sensor that works sends at most a beat a beat (while packets flow or it is
in trouble; a heartbeat every few beats when idle), a few more when asked to
report, and changes its mode (into trouble, e.g. its interface is gone, and
back) rarely. Its triggers are not counted here: the contract lets one
through per arm the supervisor ordered, and a daemon brought up and down as
fast as it goes orders hundreds a window. A sensor that sends more is flooding
the supervisor's CPU and log: it is misbehaving, and the sensor link has it
killed and replaced. So the log takes at most MODES lines a window from one
sensor process, and one error line in its life (the contract in
common/wire.py: an error is its last word), whatever it sends, and the
supervisor reads at most MESSAGES of its records a window; then one line
says it is killed, and its replacement comes after the restart backoff,
which doubles while the kills go on.
"""

from __future__ import annotations

WINDOW_BEATS = 10
# Per window of WINDOW_BEATS beats.
MESSAGES = 30 * WINDOW_BEATS
MODES = 4


class Allowance:
    """One sensor process's counts in the current window."""

    def __init__(self, beat: float, now: float) -> None:
        self.window = WINDOW_BEATS * beat
        self.start = now
        self.used = {"messages": 0, "mode changes": 0}

    def charge(self, what: str, now: float) -> str | None:
        """Count one of ``what``; past the limit, why the sensor must go."""
        if now - self.start >= self.window:
            self.start = now
            self.used = dict.fromkeys(self.used, 0)
        self.used[what] += 1
        limit = _LIMITS[what]
        if self.used[what] > limit:
            return f"more than {limit} {what} in {self.window:g} s"
        return None


_LIMITS = {"messages": MESSAGES, "mode changes": MODES}
