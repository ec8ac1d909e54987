"""Signals as events in a loop: the handler only wakes the loop up.

Each caught signal's number is written to a non-blocking pipe (Python's
wake-up fd), which the loop polls with its other descriptors and reads.
The signals get a handler rather than SIG_IGN: handled signals go back to
their default across exec, ignored ones would stay ignored in every
program a worker runs.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterable
from types import FrameType


def _wake_only(signum: int, frame: FrameType | None) -> None:
    """The wake-up fd carries the signal to the loop."""


def wakeup_fd(signals: Iterable[int]) -> int:
    """Catch ``signals``; returns the read end that receives their numbers."""
    read_end, write_end = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
    signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
    for sig in signals:
        signal.signal(sig, _wake_only)
    return read_end


def pending(read_end: int) -> list[int]:
    """The numbers of the signals caught since the last call."""
    caught: list[int] = []
    try:
        while data := os.read(read_end, 256):
            caught.extend(data)
    except BlockingIOError:
        pass
    return caught
