"""The man pages in man/ stay in step with the programs: every option that
``--help`` lists, and every config file key, has an entry on its page; and
each page renders with ``man --warnings`` without a warning."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import pytest

from tests.support.repo import REPO
from tuninetd.supervisor.config.configfile import KEYS

MAN = REPO / "man"
PAGES = ["tuninetd.8", "tuntapd.8", "tuninetd.toml.5"]


def help_options(*argv: str) -> set[str]:
    """The options a program's --help lists (its "options:" section)."""
    r = subprocess.run([sys.executable, "-m", *argv, "--help"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    section = r.stdout.split("\noptions:\n", 1)[1].split("\n\n", 1)[0]
    found = set(re.findall(r"^  (-[\w-]+)(?:, (--[\w-]+))?", section, re.M))
    options = {o for pair in found for o in pair if o}
    assert len(options) >= 4, r.stdout  # the pattern still matches the help's layout
    return options


def entries(page: str) -> list[str]:
    """The tag line of each .TP entry, as plain text (roff's \\- is -)."""
    lines = (MAN / page).read_text().splitlines()
    tags = [lines[i + 1] for i, line in enumerate(lines[:-1]) if line == ".TP"]
    return [re.sub(r"\\f[BIRP]", "", tag.replace("\\-", "-")) for tag in tags]


def documented(option: str, tags: list[str]) -> bool:
    return any(re.search(rf"(^|[\s\"(,]){re.escape(option)}($|[\s\",;)])", tag) for tag in tags)


@pytest.mark.parametrize(("page", "module"), [
    ("tuninetd.8", "tuninetd.supervisor.main"),
    ("tuntapd.8", "tuninetd.tuntapd.main"),
])
def test_every_help_option_has_an_entry(page: str, module: str) -> None:
    tags = entries(page)
    missing = sorted(o for o in help_options(module) if not documented(o, tags))
    assert missing == [], f"{page} lacks {missing}"


def test_status_options_have_an_entry() -> None:
    text = (MAN / "tuninetd.8").read_text().replace("\\-", "-")
    status = text.split(".SH STATUS", 1)[1].split(".SH ", 1)[0]
    for option in help_options("tuninetd.supervisor.main", "status") - {"-h", "--help",
                                                                         "-v", "--version"}:
        assert option in status, option


def test_every_config_key_has_an_entry() -> None:
    tags = entries("tuninetd.toml.5")
    missing = sorted(k for k in KEYS if not documented(k, tags))
    assert missing == [], f"tuninetd.toml.5 lacks {missing}"


def test_a_missing_option_is_found() -> None:
    """The check above can fail: a tag list without --beat lacks it."""
    tags = [t for t in entries("tuninetd.8") if "--beat" not in t]
    assert not documented("--beat", tags)
    assert documented("--beat", entries("tuninetd.8"))


@pytest.mark.parametrize("page", PAGES)
def test_renders_without_warnings(page: str) -> None:
    man = shutil.which("man")
    if man is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true: needs man (apt-get install man-db)")
        pytest.skip("needs man (apt-get install man-db)")
    r = subprocess.run([man, "--warnings", "-E", "UTF-8", "-l", str(MAN / page)],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "MANWIDTH": "80", "MANPAGER": "cat", "PAGER": "cat"})
    assert r.returncode == 0, r.stderr
    assert r.stderr == "", r.stderr
    assert page.split(".")[0].upper() in r.stdout
