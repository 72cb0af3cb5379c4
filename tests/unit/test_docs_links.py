"""Every relative link in the README, docs/ and the other READMEs resolves: the file exists, and an
anchor into a Markdown file names one of its headings (GitHub's slugs)."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md"),
                ROOT / "bench" / "README.md", ROOT / "sdk" / "js" / "README.md", ROOT / "sdk" / "python" / "README.md"])
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def prose(text: str) -> list[str]:
    """The lines outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced:
            lines.append(line)
    return lines


def slug(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    for line in prose(path.read_text(encoding="utf-8")):
        if match := re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line):
            base = slug(match.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            seen.setdefault(f"{base}-{count}" if count else base, 1)
    return set(seen)


def links(path: Path) -> list[str]:
    """Link targets outside code (a link's text may wrap onto the next line, or be code itself)."""
    text = re.sub(r"`[^`\n]*`", "code", "\n".join(prose(path.read_text(encoding="utf-8"))))
    return LINK.findall(text)


def test_the_pages_exist():
    assert (ROOT / "docs" / "README.md").exists()
    assert all(page.exists() for page in PAGES)


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_relative_links_resolve(page: Path):
    broken = []
    for target in links(page):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        resolved = (page.parent / file).resolve() if file else page
        if not resolved.exists():
            broken.append(f"{target}: no such file")
        elif anchor and resolved.suffix == ".md" and anchor not in anchors(resolved):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.relative_to(ROOT)}: {broken}"


def test_links_are_found():
    """The checker sees links, including one whose text is code and anchors of code headings."""
    readme = links(ROOT / "README.md")
    assert "docs/configuration.md" in readme and "sdk/js/README.md" in readme
    assert "../spoor/settings.py" in links(ROOT / "docs" / "configuration.md")
    assert "sessions-sessions-table" in anchors(ROOT / "docs" / "analytics.md")
    assert "segments-own-libraries" in anchors(ROOT / "docs" / "sending-events.md")


# A path in code spans (`ingest/intake.py`, `tests/e2e/`) that starts at one of the repository's folders.
TOP_FOLDERS = sorted(p.name for p in ROOT.iterdir() if p.is_dir() and not p.name.startswith("."))
CODE_PATH = re.compile(r"`((?:" + "|".join(map(re.escape, TOP_FOLDERS)) + r")/[\w./-]*)`")
# The performance log is history: it names files as they were on the day.
CURRENT_PAGES = [page for page in PAGES if page != ROOT / "bench" / "README.md"]


@pytest.mark.parametrize("page", CURRENT_PAGES, ids=lambda page: str(page.relative_to(ROOT)))
def test_paths_named_in_code_spans_exist(page: Path):
    """A moved or renamed file leaves no stale name in the manual (links are checked above)."""
    missing = []
    for line in prose(page.read_text(encoding="utf-8")):
        for path in CODE_PATH.findall(line):
            candidate = path.rstrip(".")
            if "*" in candidate or not candidate.strip("/"):
                continue
            if not (ROOT / candidate).exists() and not (page.parent / candidate).exists():
                missing.append(path)
    assert not missing, f"{page.relative_to(ROOT)} names files that do not exist: {missing}"
