"""docs/architecture.md is the design doc the code cites: no file cites a document outside the
repository, and every "docs/architecture.md §N" (or link to a section) names a real section."""

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "architecture.md"
# spelled in pieces so that this file does not match itself
OUTSIDE_DOC = [("DESIGN" + suffix).encode() for suffix in (" §", ".md")]
HEADING = re.compile(r"^## (\d+)\. (.+)$", re.MULTILINE)
CITATION = re.compile(r"docs/architecture\.md\s*§(\d+)((?:\s*(?:,|/|and)\s*§\d+)*)")
LINK = re.compile(r"docs/architecture\.md#([\w-]+)")


def repo_files() -> list[Path]:
    """Tracked and untracked files that git does not ignore (.venv, data, runs, artifacts are)."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout
    paths = [ROOT / name for name in listed.decode().split("\0") if name]
    return [p for p in paths if p.is_file()]  # a tracked file deleted in the tree is skipped


def sections() -> dict[int, str]:
    return {int(n): title for n, title in HEADING.findall(DOC.read_text())}


def slug(number: int, title: str) -> str:
    """GitHub's anchor for '## N. Title'."""
    text = re.sub(r"[^\w\- ]", "", f"{number}. {title}".lower())
    return text.replace(" ", "-")


def cited_sections(text: str) -> set[int]:
    found = set()
    for first, more in CITATION.findall(text):
        found |= {int(first), *map(int, re.findall(r"§(\d+)", more))}
    return found


def test_sections_are_numbered_in_order():
    numbers = [int(n) for n, _ in HEADING.findall(DOC.read_text())]
    assert numbers == list(range(1, len(numbers) + 1)), numbers


def test_no_file_cites_a_design_doc_outside_the_repo():
    hits = [
        str(p.relative_to(ROOT))
        for p in repo_files()
        if any(needle in p.read_bytes() for needle in OUTSIDE_DOC)
    ]
    assert not hits, f"cite docs/architecture.md §N instead, in: {hits}"


def test_every_cited_section_exists():
    known = sections()
    anchors = {slug(n, title) for n, title in known.items()}
    missing, cited_by_code = [], set()
    for path in repo_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        if path == DOC:  # the doc cites its own sections as bare §N
            cited = {int(n) for n in re.findall(r"§(\d+)", text)}
        else:
            cited = cited_sections(text)
            cited_by_code |= cited
        missing += [f"{path.relative_to(ROOT)}: §{n}" for n in sorted(cited - known.keys())]
        missing += [
            f"{path.relative_to(ROOT)}: #{a}" for a in LINK.findall(text) if a not in anchors
        ]
    assert not missing, f"not a section of docs/architecture.md: {missing}"
    assert cited_by_code, "no citation found: is CITATION still the form the code uses?"


def test_citation_pattern_reads_lists_of_sections():
    assert cited_sections("(docs/architecture.md §3, §4) and docs/architecture.md §7/§8") == {
        3,
        4,
        7,
        8,
    }
