"""The README and CONTRIBUTING.md point into the repository: every relative link must reach a file that exists
(and a heading that exists, when it names one). The docs site checks its own links (`make docs`, strict); these
two files are read on the repository's front page, outside the site, so they are checked here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FILES = ("README.md", "CONTRIBUTING.md")
# [text](target) and ![alt](target); the target ends at whitespace or the closing parenthesis.
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)


def _links(text: str) -> list[str]:
    """Every link target outside fenced code blocks and inline code."""
    text = FENCE.sub("", text)
    text = re.sub(r"`[^`\n]*`", "", text)
    return LINK.findall(text)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading.strip()).lower()
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def _anchors(markdown: Path) -> set[str]:
    text = FENCE.sub("", markdown.read_text())
    return {_slug(m) for m in re.findall(r"^#{1,6}\s+(.*?)\s*#*\s*$", text, re.MULTILINE)}


def _relative(target: str) -> bool:
    return not re.match(r"^[a-z][a-z0-9+.-]*:", target) and not target.startswith("#")


@pytest.mark.parametrize("name", FILES)
def test_every_relative_link_reaches_a_file(name: str) -> None:
    source = ROOT / name
    broken = []
    for target in filter(_relative, _links(source.read_text())):
        path, _, anchor = target.partition("#")
        file = (source.parent / path).resolve()
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{name} has broken links:\n  " + "\n  ".join(broken)


def test_the_checker_sees_links_and_a_missing_file(tmp_path: Path) -> None:
    """The check above would pass vacuously if no link were found; make sure it finds and judges them."""
    text = "See [a](docs/a.md), ![pic](docs/p.png) and `[code](no.md)`.\n```sh\n[fenced](no.md)\n```\n"
    assert _links(text) == ["docs/a.md", "docs/p.png"]
    assert len(_links((ROOT / "README.md").read_text())) > 10
    assert _slug("Defaults, chosen by measurement") == "defaults-chosen-by-measurement"
    assert _slug("Limits (anything outside them is refused, and nothing is stored)") == (
        "limits-anything-outside-them-is-refused-and-nothing-is-stored"
    )


def test_the_readme_stays_a_landing_page() -> None:
    """The manual lives in docs/; the README is what a newcomer reads first, so it must fit a few screens."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200, f"README.md has {len(lines)} lines; move the detail into a docs/ page"
