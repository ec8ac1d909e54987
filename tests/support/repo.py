"""Where the checkout is, for the tests that read its files (docs, man pages,
configuration samples, examples) or run code from it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
