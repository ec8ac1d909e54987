"""A command's output pipe turned into bounded, rate-limited log lines.

Nothing here touches the socket: ``Output`` hands back the text lines to
forward, so the event loop stays the only place that sends.
"""

from __future__ import annotations

import os

from tuninetd.common import wire

LINES_PER_SECOND = 50
# A line longer than this is cut; its tail is dropped up to the next newline,
# so a command printing without newlines cannot grow our memory.
MAX_LINE_BYTES = 4096
READ_SIZE = 64 * 1024
# Draining at exit reads what the command wrote before it died; the cap keeps
# a daemon that shares the pipe and writes without pause from holding us.
MAX_DRAIN_READS = 16


class LineSplitter:
    """Bytes in, complete lines out; the partial last line is kept for later."""

    def __init__(self) -> None:
        self.partial = bytearray()
        self.skipping = False

    def feed(self, data: bytes) -> list[bytes]:
        lines = []
        *complete, rest = data.split(b"\n")
        for piece in complete:
            if not self.skipping:
                lines.append(bytes(self.partial + piece))
            self.partial.clear()
            self.skipping = False
        if not self.skipping:
            self.partial += rest
            if len(self.partial) > MAX_LINE_BYTES:
                lines.append(bytes(self.partial[:MAX_LINE_BYTES]))
                self.partial.clear()
                self.skipping = True
        return lines

    def flush(self) -> list[bytes]:
        """The unterminated last line, at EOF."""
        lines = [bytes(self.partial)] if self.partial else []
        self.partial.clear()
        self.skipping = False
        return lines


class RateLimiter:
    """At most ``rate`` lines per one-second window; the rest are only counted."""

    def __init__(self, rate: int = LINES_PER_SECOND) -> None:
        self.rate = rate
        self.window_end = 0.0
        self.admitted = 0
        self.suppressed = 0

    def admit(self, now: float) -> bool:
        if now >= self.window_end:
            self.window_end = now + 1.0
            self.admitted = 0
        if self.admitted < self.rate:
            self.admitted += 1
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self, now: float, force: bool = False) -> int:
        """How many lines were dropped, once their window is over (or at EOF)."""
        if not self.suppressed or (now < self.window_end and not force):
            return 0
        count, self.suppressed = self.suppressed, 0
        return count

    def deadline(self) -> float | None:
        return self.window_end if self.suppressed else None


def suppressed_notice(count: int) -> str:
    return f"tuninetd: {count} more output lines suppressed (over {LINES_PER_SECOND}/s)"


def to_text(line: bytes) -> str:
    return wire.clean_text(line.rstrip(b"\r").decode(errors="replace"))


class Output:
    """The read end of one command's stdout+stderr pipe, made non-blocking."""

    def __init__(self, run_id: int, fd: int) -> None:
        self.run_id = run_id
        self.fd = fd  # the read end of the command's stdout and stderr
        os.set_blocking(fd, False)
        self.splitter = LineSplitter()
        self.limiter = RateLimiter()
        self.eof = False

    def read(self, now: float) -> list[str]:
        """One read's worth of lines to forward; sets ``eof`` at the end of the pipe."""
        data = self._read_chunk()
        return [] if data is None else self._take(data, now)

    def drain(self, now: float) -> list[str]:
        """What is already in the pipe, read without waiting for more."""
        lines: list[str] = []
        for _ in range(MAX_DRAIN_READS):
            data = self._read_chunk()
            if data is None:
                break
            lines += self._take(data, now)
            if self.eof:
                break
        return lines

    def tick(self, now: float) -> list[str]:
        """The suppressed-lines notice of a window that has ended."""
        return self._notice(now)

    def deadline(self) -> float | None:
        return self.limiter.deadline()

    def close(self) -> None:
        os.close(self.fd)

    def _read_chunk(self) -> bytes | None:
        """The next bytes, b"" at EOF, None when nothing is there yet."""
        try:
            return os.read(self.fd, READ_SIZE)
        except BlockingIOError:
            return None

    def _take(self, data: bytes, now: float) -> list[str]:
        if not data:
            self.eof = True
            return self._admit(self.splitter.flush(), now) + self._notice(now, force=True)
        return self._admit(self.splitter.feed(data), now)

    def _admit(self, lines: list[bytes], now: float) -> list[str]:
        out = self._notice(now)
        for line in lines:
            if self.limiter.admit(now):
                out.append(to_text(line))
        return out

    def _notice(self, now: float, force: bool = False) -> list[str]:
        count = self.limiter.take_suppressed(now, force)
        return [suppressed_notice(count)] if count else []
