"""The design lives in the repository (issue 24): no tracked file points to the company brief outside
it, every markdown link resolves to a file or folder of the repository, and every mention of a page
under ``docs/`` names one that exists. A clone has nothing but what is tracked, so the checks read
``git ls-files``, not the working tree."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path, PurePosixPath

from support import require_tool

ROOT = Path(__file__).resolve().parents[2]
#: This file shows the patterns what they catch, so the name checks leave it out.
SELF = Path(__file__).resolve().relative_to(ROOT).as_posix()

#: The brief's folder outside the repository, spelled so that this file does not mention it.
OUTSIDE_BRIEF = "/".join(("shared", "docs"))
#: The brief's page names, when not named as our own ``docs/`` pages.
BARE_BRIEF_PAGE = re.compile(r"(?<![\w/.-])(?:architecture|safety|style)\.md\b|\barchitecture §")
DOCS_MENTION = re.compile(r"(?<![\w./-])docs/[\w.-]+\.md\b")
INLINE_LINK = re.compile(r"!?\[[^\]\n]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"\n]*\")?\s*\)")
REFERENCE_LINK = re.compile(r"^\s{0,3}\[[^\]\n]+\]:\s*<?(\S+?)>?(?:\s+.*)?$", re.MULTILINE)
FENCE = re.compile(r"^\s*(```|~~~).*?^\s*\1", re.MULTILINE | re.DOTALL)
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


@cache
def tracked() -> tuple[str, ...]:
    git = require_tool("git")
    listed = subprocess.run([git, "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False)
    assert listed.returncode == 0, listed.stderr.decode(errors="replace")
    return tuple(name for name in listed.stdout.decode().split("\0") if name)


@cache
def tracked_folders() -> frozenset[str]:
    folders = {str(parent) for name in tracked() for parent in PurePosixPath(name).parents}
    return frozenset(folders - {"."})


def texts() -> Iterator[tuple[str, str]]:
    """(path, text) of every tracked text file (binary files are left out)."""
    for name in tracked():
        path = ROOT / name
        if not path.is_file():  # deleted in the working tree, not yet in the index
            continue
        data = path.read_bytes()
        if b"\0" in data:
            continue
        yield name, data.decode("utf-8", errors="replace")


def line_of(text: str, offset: int) -> int:
    return text.count("\n", 0, offset) + 1


def link_targets(text: str) -> Iterator[tuple[int, str]]:
    """(offset, target) of the markdown links outside fenced code blocks."""
    prose = FENCE.sub(lambda match: re.sub(r"[^\n]", " ", match.group(0)), text)
    for pattern in (INLINE_LINK, REFERENCE_LINK):
        for match in pattern.finditer(prose):
            yield match.start(1), match.group(1)


def link_problem(source: str, target: str) -> str | None:
    """Why the link ``target`` in tracked file ``source`` does not stay in the repository."""
    if not target or target.startswith("#"):
        return None  # a heading of the same page
    if SCHEME.match(target) or target.startswith(("/", "\\", "~")):
        return f"{target} leaves the repository (link to a path in it, relative to this file)"
    path = target.split("#", 1)[0].split("?", 1)[0]
    resolved = (ROOT / source).parent / path
    try:
        relative = resolved.resolve().relative_to(ROOT)
    except ValueError:
        return f"{target} points outside the repository"
    name = relative.as_posix()
    if name in tracked() or name in tracked_folders() or name == ".":
        return None
    return f"{target} names {name}, which the repository does not hold"


def test_no_tracked_file_points_to_the_brief_outside_the_repository() -> None:
    found = []
    for name, text in texts():
        for match in re.finditer(re.escape(OUTSIDE_BRIEF), text):
            found.append(f"{name}:{line_of(text, match.start())}")
        if name == SELF:
            continue
        without_links = INLINE_LINK.sub(lambda match: " " * len(match.group(0)), text)
        for match in BARE_BRIEF_PAGE.finditer(without_links):
            found.append(f"{name}:{line_of(text, match.start())}: {match.group(0)!r}")
    assert not found, (
        "these point to the design brief outside the repository; point them to docs/architecture.md"
        " or docs/safety.md (and a section) instead:\n" + "\n".join(found)
    )


def test_every_markdown_link_resolves_inside_the_repository() -> None:
    problems = []
    for name, text in texts():
        if not name.endswith(".md"):
            continue
        for offset, target in link_targets(text):
            why = link_problem(name, target)
            if why is not None:
                problems.append(f"{name}:{line_of(text, offset)}: {why}")
    assert not problems, "\n".join(problems)


def test_every_mentioned_docs_page_exists() -> None:
    missing = []
    for name, text in texts():
        if name == SELF:
            continue
        for match in DOCS_MENTION.finditer(text):
            if match.group(0) not in tracked():
                missing.append(f"{name}:{line_of(text, match.start())}: {match.group(0)}")
    assert not missing, "pages under docs/ that the repository does not hold:\n" + "\n".join(
        missing
    )


def test_the_checks_catch_what_they_are_for() -> None:
    """The patterns themselves: a link out, a missing page, the brief by its bare name."""
    assert link_problem("README.md", "docs/architecture.md") is None
    assert link_problem("docs/safety.md", "architecture.md#5-the-safety-state-machine") is None
    assert link_problem("hardware/README.md", "../docs/safety.md") is None
    assert link_problem("README.md", "docs/") is None
    assert link_problem("docs/safety.md", f"../../{OUTSIDE_BRIEF}/safety.md") is not None
    assert link_problem("docs/safety.md", f"/work/{OUTSIDE_BRIEF}/safety.md") is not None
    assert link_problem("docs/safety.md", "https://example.org/safety.md") is not None
    assert link_problem("docs/safety.md", "style.md") is not None
    assert [t for _, t in link_targets("see [a](b.md) and\n```\n[c](d.md)\n```\n")] == ["b.md"]
    assert BARE_BRIEF_PAGE.search("(architecture.md §3)")
    assert BARE_BRIEF_PAGE.search("safety.md, 'The limiter'")
    assert BARE_BRIEF_PAGE.search("(architecture §2)")
    assert not BARE_BRIEF_PAGE.search("see docs/safety.md §4 and docs/architecture.md §2")
    assert DOCS_MENTION.findall("docs/style.md and ../docs/safety.md") == ["docs/style.md"]
