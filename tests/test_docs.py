"""The README stays short and every relative link of the README and docs/ points at a file that exists."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# [text](target) and ![alt](target), minus web links and in-page anchors.
_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_readme_is_short_and_shows_a_picture_first() -> None:
    text = (ROOT / "README.md").read_text()
    assert len(text) <= 12_500, f"README.md has {len(text)} characters: move reference material to docs/"
    first_section = text.index("\n## ")
    assert "![" in text[:first_section], "the README's first picture must come before its first section"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_exist(page: Path) -> None:
    missing = []
    for target in _LINK.findall(page.read_text()):
        if re.match(r"[a-z]+://|#|mailto:", target):
            continue
        path = (page.parent / target.split("#")[0]).resolve()
        if not path.exists():
            missing.append(target)
    assert missing == [], f"{page.relative_to(ROOT)} links to missing files: {missing}"
