"""host/ sits below config and lifecycle (docs/design.md layering): it takes plain values. The
recovery planner is pure: it imports nothing that touches the disk."""

from __future__ import annotations

import ast
import pathlib

import pytest

HOST = pathlib.Path(__file__).resolve().parents[2] / "agent" / "host"
ABOVE_HOST = ("cutover.agent.config", "cutover.agent.lifecycle", "cutover.agent.daemon")


def _imports(path: pathlib.Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


@pytest.mark.parametrize("module", sorted(HOST.glob("*.py")), ids=lambda p: p.name)
def test_host_never_imports_a_layer_above_it(module: pathlib.Path) -> None:
    climbing = {n for n in _imports(module) if n.startswith(ABOVE_HOST)}
    assert climbing == set()


def test_recovery_planner_does_no_io() -> None:
    imported = _imports(HOST / "recovery.py")
    assert imported <= {
        "__future__",
        "dataclasses",
        "cutover.agent.host.journal",
        "cutover.agent.host.phases",
        "cutover.agent.host.state",
    }, imported
