"""The clock every test daemon runs on, and the bounds the tests allow around it."""

from __future__ import annotations

# --beat of the daemons the tests start: short, so that what takes beats is quick.
BEAT = 0.2
