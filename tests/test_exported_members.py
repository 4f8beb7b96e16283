"""Each package's ``__all__`` names exactly its public, importable members (httpx style)."""

from __future__ import annotations

import importlib
import pathlib
import pkgutil

import pytest

import cutover.agent
import cutover.controller

REPO = pathlib.Path(__file__).resolve().parent.parent


def _packages() -> list[str]:
    found = []
    for top in (cutover.agent, cutover.controller):
        found.append(top.__name__)
        for info in pkgutil.walk_packages(top.__path__, top.__name__ + "."):
            if info.ispkg:
                found.append(info.name)
    return sorted(found)


@pytest.mark.parametrize("package", _packages())
def test_all_names_exist_and_are_public(package: str) -> None:
    mod = importlib.import_module(package)
    names = mod.__all__
    # Order is ruff's RUF022 (isort-style) and linted there.
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(mod, name), f"{package}.{name} in __all__ but missing"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_") and not isinstance(v, type(importlib)) and n != "annotations"
    }
    assert public <= set(names), f"{package} exposes names not in __all__: {public - set(names)}"


def test_every_subpackage_is_installed() -> None:
    """pyproject's package list names every folder with an __init__.py (or pip drops it)."""
    import tomllib

    listed = set(
        tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    on_disk = {
        "cutover." + ".".join(p.parent.relative_to(REPO).parts)
        for top in ("agent", "controller")
        for p in (REPO / top).rglob("__init__.py")
    }
    assert listed == on_disk


def test_agent_never_imports_controller() -> None:
    offenders = [
        str(p)
        for p in (REPO / "agent").rglob("*.py")
        if "cutover.controller" in p.read_text() or "from controller" in p.read_text()
    ]
    assert offenders == []
