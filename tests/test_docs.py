"""The manual as a whole: every internal link lands, and the version is one number."""

import re
import tomllib
from functools import cache

import pytest
from markdown_it import MarkdownIt

from tests.harness import REPO

PAGES = sorted([REPO / "README.md", REPO / "CHANGELOG.md", *(REPO / "docs").glob("*.md")])


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


@cache
def anchors(page) -> set[str]:
    tokens = MarkdownIt("commonmark").enable("table").parse(page.read_text())
    return {
        slug(tokens[i + 1].content)
        for i, token in enumerate(tokens)
        if token.type == "heading_open"
    }


def links(page) -> list[str]:
    """Every link target of a page (inline links), as written."""
    found = []
    for token in MarkdownIt("commonmark").enable("table").parse(page.read_text()):
        for child in token.children or []:
            if child.type == "link_open":
                found.append(child.attrs["href"])
    return found


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_every_internal_link_lands_on_a_file_and_heading_that_exist(page):
    internal = [href for href in links(page) if not re.match(r"^[a-z]+:", href)]
    assert internal or page.name == "CHANGELOG.md" or page.parent.name == "docs"
    for href in internal:
        path, _, anchor = href.partition("#")
        target = (page.parent / path).resolve() if path else page
        assert target.exists(), f"{page.name}: {href}"
        if anchor and target.suffix == ".md":
            assert anchor in anchors(target), f"{page.name}: {href}"


def test_the_version_is_the_changelogs_latest_release_and_each_upgrade_names_one():
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    changelog = (REPO / "CHANGELOG.md").read_text()
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - \d{4}-\d{2}-\d{2}$", changelog, re.M)
    assert releases[0] == version
    lifecycle = (REPO / "docs/lifecycle.md").read_text()
    headings = re.findall(r"^## (Upgrading to (\d+\.\d+\.\d+), from .+)$", lifecycle, re.M)
    assert [release for _, release in headings] == releases[: len(headings)]
    # Each release that needs steps points at them.
    for heading, release in headings:
        section = changelog.split(f"## [{release}]")[1].split("\n## ")[0]
        assert f"(docs/lifecycle.md#{slug(heading)})" in section


def test_the_license_covers_the_code_and_the_notice_the_vendored_files():
    assert "Apache License\n" in (REPO / "LICENSE").read_text()
    notice = (REPO / "NOTICE").read_text()
    for folder in (REPO / "tests/schemas").iterdir():
        assert f"tests/schemas/{folder.name}" in notice
