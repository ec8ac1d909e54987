"""docs/security.md names exactly the system calls the sensors' seccomp
allow-list (supervisor/sandbox/allowlist.py) lets through."""

from __future__ import annotations

import re

from tests.support.repo import REPO
from tuninetd.common.worker import CHANNEL_FD
from tuninetd.supervisor.sandbox import allowlist

SECURITY = REPO / "docs" / "security.md"


def documented() -> set[str]:
    """The system calls in backquotes between "Allowed" and "Anything else"
    (a name followed by its arguments, ``prctl(PR_SET_NAME)``, counts as the name)."""
    text = " ".join(SECURITY.read_text().split())
    start = text.index("which the one program names. Allowed")
    passage = text[start:text.index("Anything else kills the process", start)]
    return set(re.findall(r"`([a-z_0-9]+)(?:\([^`]*\))?`", passage))


def test_security_page_lists_the_allowed_system_calls() -> None:
    code = {*allowlist.PLAIN, *allowlist.narrowed(CHANNEL_FD)}
    docs = documented()
    assert docs == code, (f"in the code, not in docs/security.md: {sorted(code - docs)}; "
                          f"in docs/security.md, not in the code: {sorted(docs - code)}")
