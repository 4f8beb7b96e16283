"""Every lifecycle operation goes through one unit of work: one lock, one recovery, one
canonical ``lifecycle_operation`` log line, whatever the outcome."""

from __future__ import annotations

import asyncio
from collections.abc import MutableMapping
from typing import Any

import pytest
from structlog.testing import capture_logs

from cutover.agent.config import load_config
from cutover.agent.errors import LockedError, NotFoundError, StateError
from cutover.agent.host.lock import AppLock
from cutover.agent.lifecycle import AppManager
from tests.conftest import Host, PackageFactory


def manager(host: Host) -> AppManager:
    cfg = load_config(host.config)
    return AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], actor="test")


def op_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "lifecycle_operation"]


def test_one_log_line_per_operation_with_its_outcome(
    host: Host, make_package: PackageFactory
) -> None:
    package = make_package("1.0.0")
    with capture_logs() as logs:
        asyncio.run(manager(host).stage(package))
        asyncio.run(manager(host).activate("1.0.0"))
        before = host.snapshot()
        with pytest.raises(NotFoundError):
            asyncio.run(manager(host).activate("9.9.9"))
    assert host.snapshot() == before
    lines = op_lines(logs)
    assert [(e["op"], e["outcome"], e["version"], e["error"], e["log_level"]) for e in lines] == [
        ("stage", "succeeded", "1.0.0", None, "info"),
        ("activate", "succeeded", "1.0.0", None, "info"),
        ("activate", "failed", None, "not_found", "error"),  # journalctl -p err finds it
    ]
    assert all(e["app"] == "demo" and e["actor"] == "test" for e in lines)
    assert lines[1]["current"] == "1.0.0" and lines[1]["recovered"] == 0


def test_a_held_lock_refuses_before_anything_runs_and_is_free_after_a_failure(
    host: Host, make_package: PackageFactory
) -> None:
    """While another holder has the flock the unit refuses at once (nothing changed); after
    an operation failed inside the unit, the lock is free again."""
    asyncio.run(manager(host).stage(make_package("1.0.0")))
    before = host.snapshot()
    lock = AppLock(host.root / ".cutover" / "lock", host.app, "held by test")
    with lock, pytest.raises(LockedError, match="held by test"):
        asyncio.run(manager(host).activate("1.0.0"))
    assert host.snapshot() == before
    with pytest.raises(StateError, match="no release to roll back to"):
        asyncio.run(manager(host).rollback())
    assert asyncio.run(manager(host).activate("1.0.0")).current == "1.0.0"
    assert host.current == "releases/1.0.0"
