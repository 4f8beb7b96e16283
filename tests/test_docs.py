"""The docs describe the code as it is: every module is on the map, links resolve, no phantom docs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
DOCS = [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md"))]


def _modules() -> list[str]:
    return sorted(
        str(p.relative_to(REPO))
        for top in ("agent", "controller")
        for p in (REPO / top).rglob("*.py")
        if p.name != "__init__.py"
    )


def test_design_module_map_lists_every_module() -> None:
    design = (REPO / "docs" / "design.md").read_text()
    missing = [m for m in _modules() if f"`{m}`" not in design]
    assert missing == [], f"docs/design.md module map lacks {missing}"
    listed = set(re.findall(r"`((?:agent|controller)/[\w/]+\.py)`", design))
    stale = sorted(m for m in listed if not (REPO / m).exists())
    assert stale == [], f"docs/design.md names modules that do not exist: {stale}"


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_resolve(doc: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text()):
        if "://" in target or target.startswith("mailto:"):
            continue
        if not (doc.parent / target).exists():
            broken.append(target)
    assert broken == []


PHANTOM = "DESIGN" + ".md"  # spelled apart so this file does not match itself


def test_no_reference_to_a_design_document_outside_the_repository() -> None:
    offenders = [
        str(p.relative_to(REPO))
        for top in ("agent", "controller", "docs", "tests", "bench", "systemd")
        for p in (REPO / top).rglob("*")
        if p.is_file()
        and p.suffix in {".py", ".md", ".toml", ".service"}
        and PHANTOM in p.read_text()
    ]
    offenders += [n for n in ("README.md", "pyproject.toml") if PHANTOM in (REPO / n).read_text()]
    assert offenders == []
