"""The README and the pages under docs/ link to files and headings that exist,
and every page under docs/ can be reached from the README."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.support.repo import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*$", re.M)


def _prose(page: Path) -> str:
    """The page without its code blocks, whose brackets are no links."""
    return FENCE.sub("", page.read_text())


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation gone, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.replace("`", "").lower())
    return text.replace(" ", "-")


def _relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page))
            if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(page: Path) -> None:
    broken = []
    for target in _relative_links(page):
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md":
            anchors = {_anchor(h) for h in HEADING.findall(_prose(dest))}
            if anchor not in anchors:
                broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(REPO)}: {broken}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / t.partition("#")[0]).resolve() for t in _relative_links(REPO / "README.md")}
    orphans = [p.name for p in PAGES[1:] if p.resolve() not in linked]
    assert not orphans, f"docs pages the README does not link: {orphans}"


def test_the_check_finds_a_broken_link(tmp_path: Path) -> None:
    (tmp_path / "a.md").write_text("# Top\n\n[x](b.md) [y](#top) [z](#nowhere)\n"
                                   "```\n[not a link](c.md)\n```\n")
    assert _relative_links(tmp_path / "a.md") == ["b.md", "#top", "#nowhere"]
    assert _anchor("tuntapd and example `scripts`") == "tuntapd-and-example-scripts"
    assert _anchor("What's new, really?") == "whats-new-really"
