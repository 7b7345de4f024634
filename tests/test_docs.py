"""Invariant guarded: the project stands on its own.

* Package code (vmcore, vnodefs, swapd, scripts), README.md and the docs never point at material
  a user who clones the project does not have: no `../shared`, `shared/seeds`, `shared/reference`,
  no source documents cited by number ("seed 001", "seeds 000/003"), no tracker issue numbers.
  The Apple documents are cited by title; docs/mach-vm.md is the project's own account.
* Every relative link in README.md and the Markdown docs names an existing file, and a `#anchor`
  into a Markdown file names one of its headings; every `docs/mach-vm.md#anchor` mentioned in
  package code names a heading of docs/mach-vm.md.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("vmcore", "vnodefs", "swapd", "scripts")
CODE_SUFFIXES = {".py", ".md", ".sh", ".txt", ".toml", ".json"}

FORBIDDEN = [
    (re.compile(r"\.\./shared\b"), "a path into ../shared"),
    (re.compile(r"\bshared/(seeds|reference)\b"), "a path into the shared seeds / reference"),
    (re.compile(r"(?i)\bseeds?[\s_-]*0\d\d\b"), "a source document cited by number"),
    (re.compile(r"\bxnu\.md\b"), "the shared XNU notes (cite the XNU release instead)"),
    (re.compile(r"(?i)\bissue\s+#?\d+|\bissues\s+#\d+"), "a tracker issue number"),
    (re.compile(r"(?i)(\(|\b(see|pr|fixes|closes|refs?|ticket|bug)\s+)#\d+\b"), "a tracker issue number"),
]


def code_files() -> list[Path]:
    out = []
    for d in CODE_DIRS:
        out += [p for p in sorted((ROOT / d).rglob("*")) if p.is_file() and p.suffix in CODE_SUFFIXES
                and "__pycache__" not in p.parts]
    return out


def doc_files() -> list[Path]:
    return [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md")) + sorted(
        p for d in CODE_DIRS for p in (ROOT / d).rglob("*.md"))


def rel(p: Path) -> str:
    return str(p.relative_to(ROOT))


@pytest.mark.parametrize("path", sorted(set(code_files() + doc_files())), ids=rel)
def test_no_pointer_outside_the_project(path):
    bad = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        for pattern, what in FORBIDDEN:
            m = pattern.search(line)
            if m:
                bad.append(f"{rel(path)}:{n}: {what}: {m.group(0)!r} in {line.strip()[:100]!r}")
    assert not bad, "\n".join(bad)


def slug(heading: str) -> str:
    """GitHub's anchor for a Markdown heading."""
    s = re.sub(r"[`*_]{2,}|[`*]", "", heading.strip()).lower()
    s = re.sub(r"[^\w\- ]", "", s)
    return s.replace(" ", "-")


def anchors(md: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    return {slug(m.group(1)) for m in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", text, re.M)}


LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def links(md: Path) -> list[str]:
    text = re.sub(r"```.*?```", "", md.read_text(), flags=re.S)
    text = re.sub(r"`[^`\n]*`", lambda m: m.group(0) if "](" in m.group(0) else "", text)
    return LINK.findall(text)


def test_slug_matches_github():
    assert slug("vm_stat counters") == "vm_stat-counters"
    assert slug("Shadow chains and copy-on-write") == "shadow-chains-and-copy-on-write"
    assert slug("Universal page lists (UPLs)") == "universal-page-lists-upls"


@pytest.mark.parametrize("md", doc_files(), ids=rel)
def test_relative_links_resolve(md):
    bad = []
    for target in links(md):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (md.parent / path).resolve() if path else md
        if not dest.exists():
            bad.append(f"{rel(md)}: link to a missing file: {target}")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{rel(md)}: link to a missing heading: {target}")
    assert not bad, "\n".join(bad)


def test_readme_points_at_the_mechanisms_doc():
    assert "(docs/mach-vm.md)" in (ROOT / "README.md").read_text()


def test_code_anchors_into_mach_vm_exist():
    have = anchors(ROOT / "docs" / "mach-vm.md")
    bad = []
    for path in code_files():
        for m in re.finditer(r"docs/mach-vm\.md#([\w\-]+)", path.read_text(errors="replace")):
            if m.group(1) not in have:
                bad.append(f"{rel(path)}: docs/mach-vm.md#{m.group(1)} is not a heading")
    assert not bad, "\n".join(bad)


def test_mach_vm_cites_documents_and_releases():
    text = (ROOT / "docs" / "mach-vm.md").read_text()
    for title in ("Kernel Programming Guide", "Memory and Virtual Memory", "Mach Overview",
                  "Memory Management in Mac OS X", "xnu-792", "xnu-1228"):
        assert title in text, title
    assert "## References" in text
