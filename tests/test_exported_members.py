"""Each package's ``__all__`` names exactly its public, importable members (httpx style)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize("package", ["agent", "controller"])
def test_all_names_exist_and_are_public(package: str) -> None:
    mod = importlib.import_module(package)
    names = mod.__all__
    assert names == sorted(names, key=str.lower) or names == sorted(names)
    assert len(set(names)) == len(names)
    for name in names:
        assert hasattr(mod, name), f"{package}.{name} in __all__ but missing"
    public = {
        n
        for n, v in vars(mod).items()
        if not n.startswith("_") and not isinstance(v, type(importlib)) and n != "annotations"
    }
    assert public <= set(names), f"{package} exposes names not in __all__: {public - set(names)}"


def test_agent_never_imports_controller() -> None:
    import pathlib

    root = pathlib.Path(__file__).resolve().parent.parent / "agent"
    offenders = [
        str(p)
        for p in root.rglob("*.py")
        if "import controller" in p.read_text() or "from controller" in p.read_text()
    ]
    assert offenders == []
