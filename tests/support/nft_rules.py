"""nftables rules in a test's namespace: one table whose chains log what the
rules match to an NFLOG group."""

from __future__ import annotations

import subprocess

from tests.support.netlab import Netns, sh

TABLE = "t"


def nft(ns: Netns, *args: str) -> subprocess.CompletedProcess[str]:
    """``nft args...`` run in the namespace (an error fails the test)."""
    return sh(*ns.exec_argv("nft", *args))


def log_rules(ns: Netns, *rules: str, hook: str = "output", family: str = "inet") -> None:
    """A chain on ``hook`` in TABLE of ``family`` holding ``rules`` (each logs
    what it matches); TABLE and the chain are made if they are not there yet."""
    nft(ns, "add", "table", family, TABLE)
    nft(ns, "add", "chain", family, TABLE, hook, f"{{ type filter hook {hook} priority 0; }}")
    for rule in rules:
        nft(ns, "add", "rule", family, TABLE, hook, *rule.split())
