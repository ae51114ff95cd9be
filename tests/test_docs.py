"""The design in the repository: every citation of docs/DESIGN.md names an anchor it has, and nothing cites a file
outside the repository. Fast: no servers, only the files of this checkout.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "DESIGN.md"
# directories that are not the project's own text: tool caches, virtualenvs, build output, recorded binlogs
_SKIP_DIRS = {
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    ".mypy_cache",
    ".ruff_cache",
    ".pytest_cache",
    "build",
    "dist",
    "node_modules",
    "fixtures",
}
# where the project's comments, docstrings and docs live (the scope of the "outside the repository" checks)
_CITING = ("src", "tests", "docs", "benchmarks", "scripts", "README.md", "CONTRIBUTING.md")
# any citation of the design's anchors: docs/DESIGN.md#x from the root, DESIGN.md#x inside docs/, ../docs/... elsewhere
_CITATION = re.compile(r"DESIGN\.md#([A-Za-z0-9_-]+)")
# written in two parts, so this file does not match itself
_OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "/work/" + "shared", r"\bshared/" + "(?:DESIGN|notes)"]))
# the brief's rule numbers ("DESIGN.md rule 7", "(rules 2 and 11)"): cite an anchor instead
_NUMBERED = re.compile(r"\b" + "rules? " + r"\d+\b", re.IGNORECASE)
_BARE_DESIGN = re.compile(r"(?<![\w/.])DESIGN(?:\.md)?\b")


def _files(*tops: str) -> Iterator[Path]:
    for top in tops:
        path = ROOT / top
        if path.is_file():
            yield path
            continue
        for parent, dirs, names in os.walk(path):
            dirs[:] = sorted(d for d in dirs if d not in _SKIP_DIRS and not d.endswith(".egg-info"))
            yield from (Path(parent) / name for name in sorted(names))


def _text(path: Path) -> str | None:
    if path.stat().st_size > 2_000_000:
        return None
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None  # a binary file cites nothing


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"\s", "-", re.sub(r"[^\w\s-]", "", text))


def design_anchors() -> set[str]:
    text = DESIGN.read_text(encoding="utf-8")
    ids = set(re.findall(r'<a\s+id="([^"]+)"', text))
    slugs = {_slug(m) for m in re.findall(r"^#{1,6}\s+(.+)$", text, re.MULTILINE)}
    return ids | slugs


def _where(path: Path, text: str, at: int) -> str:
    return f"{path.relative_to(ROOT)}:{text.count(chr(10), 0, at) + 1}"


def test_every_cited_design_anchor_exists() -> None:
    anchors = design_anchors()
    cited, missing = 0, []
    for path in _files("."):
        text = _text(path)
        if text is None or path == Path(__file__).resolve():
            continue
        for match in _CITATION.finditer(text):
            cited += 1
            if match.group(1) not in anchors:
                missing.append(f"{_where(path, text, match.start())}: #{match.group(1)}")
    assert cited > 0, "no citation of docs/DESIGN.md found: is the scan looking at the repository?"
    assert not missing, "citations of anchors docs/DESIGN.md does not have:\n  " + "\n  ".join(missing)


def test_design_links_within_itself_resolve() -> None:
    anchors = design_anchors()
    text = DESIGN.read_text(encoding="utf-8")
    broken = [m.group(1) for m in re.finditer(r"\]\(#([^)]+)\)", text) if m.group(1) not in anchors]
    assert not broken, f"links inside docs/DESIGN.md to anchors it does not have: {broken}"


def test_design_anchors_are_unique() -> None:
    ids = re.findall(r'<a\s+id="([^"]+)"', DESIGN.read_text(encoding="utf-8"))
    assert len(ids) == len(set(ids)), f"anchors defined twice: {sorted({i for i in ids if ids.count(i) > 1})}"


def test_nothing_cites_a_file_outside_the_repository() -> None:
    found = []
    for path in _files(*_CITING):
        text = _text(path)
        if text is None or path == Path(__file__).resolve():
            continue
        for pattern, why in (
            (_OUTSIDE, "a path outside the repository"),
            (_NUMBERED, "a rule by number (cite docs/DESIGN.md#<anchor>)"),
        ):
            if path == DESIGN and pattern is _NUMBERED:
                continue  # its table of the old numbers
            found += [f"{_where(path, text, m.start())}: {why}: {m.group(0)!r}" for m in pattern.finditer(text)]
        if path.suffix == ".py":
            # in code, a bare "DESIGN.md" is the brief outside the repository; the repository's is docs/DESIGN.md
            found += [
                f"{_where(path, text, m.start())}: {m.group(0)!r} without docs/ (cite docs/DESIGN.md#<anchor>)"
                for m in _BARE_DESIGN.finditer(text)
            ]
    assert not found, "\n  ".join(["citations that do not point into the repository:", *found])


def test_the_readme_and_the_architecture_link_the_design() -> None:
    assert "docs/DESIGN.md" in (ROOT / "README.md").read_text(encoding="utf-8")
    assert "(DESIGN.md" in (ROOT / "docs" / "ARCHITECTURE.md").read_text(encoding="utf-8")
