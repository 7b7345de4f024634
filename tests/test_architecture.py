"""Invariant guarded: the package boundaries (README.md, "Layout").

* vmcore's model modules import no backing store (no vnodefs, swapd, fuse/mfusepy);
  only the wiring layer (vmcore.lab, vmcore.cli, vmcore.experiment*) may import all three.
* vnodefs and swapd never import each other, and reach into vmcore only through its pager
  interface and public helpers, never its model internals. One named, narrow exception: vnodefs
  may import swapd.profiles (the app_profile store), so that real programs run over a vnodefs
  mount and modelled tasks share one profile tree and format.
* no import cycles between the three packages.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("vmcore", "vnodefs", "swapd")
WIRING = {"vmcore.lab", "vmcore.cli", "vmcore.__main__"}
WIRING_PREFIXES = ("vmcore.experiment", "vmcore.lab_")
# what vnodefs / swapd may use of vmcore
VMCORE_PUBLIC = {"vmcore", "vmcore.pager", "vmcore.errors", "vmcore.testing", "vmcore.clock",
                 "vmcore.workingset", "vmcore.stats", "vmcore.types", "vmcore.profile", "vmcore.report"}
BACKING = {"fuse", "mfusepy", "fusepy"}
# the allowed back edges between the two backing-store packages, each named
ALLOWED_CROSS = {"swapd.profiles"}


def modules():
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).with_suffix("")
            name = ".".join(rel.parts)
            if name.endswith(".__init__"):
                name = name[: -len(".__init__")]
            yield name, path


def imports_of(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def is_wiring(name: str) -> bool:
    return name in WIRING or name.startswith(WIRING_PREFIXES)


@pytest.mark.parametrize("name,path", list(modules()), ids=lambda v: str(v) if isinstance(v, str) else "")
def test_module_boundaries(name, path):
    pkg = name.split(".")[0]
    for imp in imports_of(path):
        top = imp.split(".")[0]
        if pkg == "vmcore" and not is_wiring(name):
            assert top not in ("vnodefs", "swapd") and top not in BACKING, \
                f"{name} (a model module) imports {imp}; only the wiring layer may"
        if pkg in ("vnodefs", "swapd"):
            other = "swapd" if pkg == "vnodefs" else "vnodefs"
            if top == other:
                assert imp in ALLOWED_CROSS or imp.rsplit(".", 1)[0] in ALLOWED_CROSS, \
                    f"{name} imports {imp}: {pkg} and {other} must stay independent"
            if top == "vmcore":
                mod = imp if imp in VMCORE_PUBLIC else imp.rsplit(".", 1)[0]
                assert mod in VMCORE_PUBLIC, f"{name} reaches into vmcore internals: {imp}"
        if pkg == "swapd":
            assert top not in BACKING, f"{name} imports FUSE ({imp}); swapd needs no FUSE"


def test_test_module_basenames_are_unique():
    """pytest's default (prepend) import mode imports test modules by basename: two test files with
    one name in different folders stop collection with 'import file mismatch'."""
    names = [p.name for p in (ROOT / "tests").rglob("test_*.py")]
    dups = sorted({n for n in names if names.count(n) > 1})
    assert not dups, f"test module basenames used twice: {dups}"
