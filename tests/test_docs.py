"""The README stays short and every relative link of the README and docs/ points at a file that exists; every test a
page names exists, and every promise a page calls tested is in robustness.md's table of promises with its tests."""

from __future__ import annotations

import ast
import fnmatch
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


# ------------------------------------------------------------------------------------------------ promises and tests

ANCHOR = "promises-and-the-tests-that-prove-them"
ROBUSTNESS = ROOT / "docs" / "robustness.md"
# `tests/<file>.py::<test>` (a `*` matches any test names alike, `[...]` a parameter).
_QUALIFIED = re.compile(r"`(tests/[\w/]+\.py)::(test_[\w*]+)(?:\[[^`]*\])?`")
# `tests/<file>.py` (`test_a*`, `test_b`): tests of a file listed after it.
_LISTED = re.compile(r"`(tests/[\w/]+\.py)` \(((?:`test_[\w*]+`(?:, )?)+)\)")


def _tests_in(path: Path) -> set[str]:
    """The names of the test functions a test file defines."""
    return {node.name for node in ast.parse(path.read_text()).body
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def _edit_cases() -> set[str]:
    """The cases of tests/test_edit.py's EDIT_ERRORS (the `edit[<case>]` of robustness.md)."""
    for node in ast.parse((ROOT / "tests" / "test_edit.py").read_text()).body:
        if isinstance(node, ast.AnnAssign) and getattr(node.target, "id", None) == "EDIT_ERRORS":
            return {key.value for key in node.value.keys}
    raise AssertionError("tests/test_edit.py defines no EDIT_ERRORS")


def _named_tests(text: str) -> list[tuple[str, str]]:
    """Every (file, test name) a page names."""
    named = [(f, name) for f, name in _QUALIFIED.findall(text)]
    for f, listed in _LISTED.findall(text):
        named += [(f, name) for name in re.findall(r"`(test_[\w*]+)`", listed)]
    return named


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_test_a_page_names_exists(page: Path) -> None:
    text = page.read_text()
    missing = []
    for f, name in _named_tests(text):
        path = ROOT / f
        if not path.is_file() or not fnmatch.filter(_tests_in(path), name):
            missing.append(f"{f}::{name}")
    if page == ROBUSTNESS:
        # The Bad input table names tests of tests/test_bad_input.py bare, and dequant-edit's cases as edit[<case>].
        bad_input = _tests_in(ROOT / "tests" / "test_bad_input.py")
        missing += [name for name in re.findall(r"`(test_\w+)(?:\[[^`]*\])?`", text)
                    if name not in bad_input and not any(name == n for _, n in _named_tests(text))]
        cases = _edit_cases()
        missing += [f"edit[{case}]" for case in re.findall(r"`edit\[([^\]`]+)\]`", text)
                    if case not in cases | {"*", "<case>"}]
    assert missing == [], f"{page.relative_to(ROOT)} names tests that do not exist: {missing}"


def _blocks(text: str) -> list[str]:
    """A page's paragraphs and table rows (each row a block of its own)."""
    blocks, para = [], []
    for line in text.splitlines():
        if line.startswith("|") or not line.strip():
            blocks += ["\n".join(para)] if para else []
            para = []
            if line.startswith("|"):
                blocks.append(line)
        else:
            para.append(line)
    return blocks + (["\n".join(para)] if para else [])


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_tested_claim_links_to_its_test(page: Path) -> None:
    """A page that says "tested" links to robustness.md's table of promises, where the test is named."""
    text = page.read_text()
    if page == ROBUSTNESS:
        text = text[:text.index("## Promises and the tests that prove them")]
    unlinked = [b for b in _blocks(text) if re.search(r"\btested\b", b, re.IGNORECASE) and ANCHOR not in b]
    assert unlinked == [], f"{page.relative_to(ROOT)}: 'tested' without a link to the table: {unlinked}"


def test_every_promise_names_its_tests() -> None:
    text = ROBUSTNESS.read_text()
    section = text[text.index("## Promises and the tests that prove them"):]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| Promise")]
    assert len(rows) >= 30
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split(" | ")]
        assert len(cells) == 2 and _QUALIFIED.findall(cells[1]), row
