"""The README, the pages in docs/ and bench/README.md: every relative link and every repository
path they name exists, every anchor is a heading of its page, every page is reachable from the
README, and the README stays short enough to read in five minutes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.conftest import REPO

README = REPO / "README.md"
PAGES = [README, *sorted((REPO / "docs").glob("*.md")), REPO / "bench" / "README.md"]
README_LIMIT = 10 * 1024

# Paths in the repository that a page may name: anything under these folders, and these files.
FOLDERS = ("app/", "bench/", "containers/", "docs/", "scripts/", "tests/", "tools/", "volumes/",
           ".ci/")
FILES = ("README.md", "pyproject.toml", "requirements.txt", "space.py", "docker-bake.hcl")
# Made at run time, so not in a fresh checkout: the default model, the database and the
# embedded engine's log.
MADE_AT_RUN_TIME = {
    "volumes/models/SmolLM2-135M-Instruct.Q4_1.gguf",
    "volumes/data/playground.db",
    "volumes/data/engine.log",
    # ESLint, installed by scripts/test (tools/jslint's lock).
    "tools/jslint/node_modules/",
    "tools/jslint/node_modules/.bin/eslint",
}

LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.DOTALL | re.MULTILINE)
CODE_SPAN = re.compile(r"`([^`\n]+)`")


def page_id(page: Path) -> str:
    return str(page.relative_to(REPO))


def anchors(page: Path) -> set[str]:
    """GitHub's ids for the page's headings: lower case, punctuation dropped, spaces as
    hyphens, a repeated heading numbered."""
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", FENCE.sub("", page.read_text()), re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        candidate, number = slug, 0
        while candidate in found:
            number += 1
            candidate = f"{slug}-{number}"
        found.add(candidate)
    return found


def links(page: Path) -> list[str]:
    """The page's Markdown links outside code blocks, web addresses left out."""
    text = FENCE.sub("", page.read_text())
    return [target for target in LINK.findall(text)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]


def named_paths(page: Path) -> set[str]:
    """Repository paths named in code: `app/engine.py`, `scripts/up cpu`, a path in a
    command, without placeholders or globs."""
    text = page.read_text()
    code = [*CODE_SPAN.findall(FENCE.sub("", text)), *FENCE.findall(text)]
    found = set()
    for word in (word for span in code for word in span.split()):
        word = word.strip("'\"(),;:").removeprefix("./")
        if any(mark in word for mark in "*<>{}$[]=#~"):
            continue
        if word.startswith(FOLDERS) or word in FILES:
            found.add(word.rstrip("."))
    return found


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_relative_link_resolves(page: Path) -> None:
    for target in links(page):
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        assert linked.exists(), f"{page_id(page)} links to {target}, which does not exist"
        if anchor:
            assert linked.suffix == ".md", f"{page_id(page)}: an anchor into {path}"
            assert anchor in anchors(linked), (
                f"{page_id(page)} links to {target}: no such heading in {page_id(linked)}"
            )


@pytest.mark.parametrize("page", PAGES, ids=page_id)
def test_every_repository_path_named_exists(page: Path) -> None:
    missing = {path for path in named_paths(page) - MADE_AT_RUN_TIME
               if not (REPO / path).exists()}
    assert not missing, f"{page_id(page)} names paths that do not exist: {sorted(missing)}"


def test_the_layout_table_names_every_module_and_script_of_the_app() -> None:
    """docs/development.md's layout lists each module of ``app/`` (packages' ``__init__`` and
    the migrations' versions aside) and each of the page's scripts."""
    named = named_paths(REPO / "docs" / "development.md")
    modules = {
        path.relative_to(REPO).as_posix()
        for path in [*(REPO / "app").rglob("*.py"), *(REPO / "app" / "ui").glob("*.js")]
        if path.name != "__init__.py" and "versions" not in path.parts
    }
    assert not modules - named, f"not in docs/development.md: {sorted(modules - named)}"


def test_every_docs_page_is_linked_from_the_readme() -> None:
    linked = {(REPO / target.partition("#")[0]).resolve() for target in links(README)}
    orphans = [page_id(page) for page in PAGES[1:] if page.resolve() not in linked]
    assert not orphans, f"pages the README does not link to: {orphans}"


def test_the_readme_stays_short() -> None:
    size = len(README.read_bytes())
    assert size < README_LIMIT, (
        f"README.md is {size} bytes; move detail into docs/ to keep it under {README_LIMIT}"
    )


def test_the_checks_see_what_they_check() -> None:
    """The extraction itself: a heading's id, a link, a path in a command."""
    assert {"what-leaves-your-machine", "raw-prompt-starchat-style"} <= (
        anchors(REPO / "docs/operations.md") | anchors(REPO / "docs/backends.md")
    )
    assert "docs/settings.md" in links(README)
    assert {"scripts/run", "scripts/test"} <= named_paths(README)
