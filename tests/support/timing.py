"""The clock every test daemon runs on, and the bounds the tests allow around it."""

from __future__ import annotations

# --beat of the daemons the tests start: short, so that what takes beats is quick.
BEAT = 0.2
# Scheduling noise allowed on top of a promised bound (2 busy cores).
SLACK = 0.5
# The supervisor kills a worker silent for this many beats.
SILENT_BEATS = 10
# The first wait before a dead worker is replaced.
BACKOFF_FIRST = 0.5
