"""The per-host steps of fleet commands: stage (upload or fetch), activate, rollback.

Each function returns a :data:`~cutover.controller.fleet.runner.HostWork` for the runner. A step
succeeds when the agent's operation succeeded; a failed operation is reported with its id and
the agent's reason, classified by the error class of that reason; the agent saying it already had the release
(``already_staged``, ``already_active``) is :attr:`HostStatus.UNCHANGED`, so re-running a push or
an activation is a no-op that still exits 0.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cutover.controller.fleet.agents import AgentPort, OpRecord
from cutover.controller.fleet.results import HostStatus, classify, host_exit_code
from cutover.controller.fleet.runner import Done, HostWork

__all__ = ["activate_step", "record_done", "rollback_step", "stage_step"]


def record_done(record: OpRecord, unchanged_flag: str) -> Done:
    """What a finished operation's record means for its host (``unchanged_flag``: the result
    field that says nothing had to be done)."""
    result = record.result or {}
    failure = record.failure()
    if failure is not None:  # classified by the error's class, like any other error
        status = classify(failure)
        return Done(
            status=status,
            error=failure.code,
            exit_code=host_exit_code(status, failure),
            message=failure.message,
            operation=record.id,
            current=result.get("current"),
        )
    return Done(
        status=HostStatus.UNCHANGED if result.get(unchanged_flag) else HostStatus.OK,
        message=str(result.get("message", "")),
        operation=record.id,
        version=result.get("version"),
        current=result.get("current"),
        previous=result.get("previous"),
    )


class _OnceDigest:
    """The package's SHA-256, computed once (off the loop) however many hosts upload it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._value: bytes | None = None

    async def get(self) -> bytes:
        async with self._lock:
            if self._value is None:
                self._value = await asyncio.to_thread(_file_sha256, self._path)
            return self._value


def _file_sha256(path: Path) -> bytes:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest()


def stage_step(
    app: str, version: str, *, package: Path | None = None, url: str | None = None
) -> HostWork:
    """Stage ``version`` from a local ``package`` (uploaded; hashed once for all hosts, each agent
    still checks the body against the signed digest) or a ``url`` the agent fetches."""
    if (package is None) == (url is None):
        raise ValueError("stage_step needs exactly one of package and url")

    digest = _OnceDigest(package) if package is not None else None

    async def work(agent: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
        if package is not None and digest is not None:
            record = await agent.upload(app, version, package, await digest.get(), on_event)
        elif url is not None:
            record = await agent.fetch(app, version, url, on_event)
        return record_done(record, "already_staged")

    return work


def activate_step(app: str, version: str) -> HostWork:
    async def work(agent: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
        return record_done(await agent.activate(app, version, on_event), "already_active")

    return work


def rollback_step(app: str, to: str | None, *, accept_db_risk: bool = False) -> HostWork:
    """Roll back to ``to`` (None: each host's previous); ``accept_db_risk`` lets the agent cross
    a release whose database rollback is ``unsafe`` (journaled there), else it refuses."""

    async def work(agent: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
        if accept_db_risk:
            record = await agent.rollback(app, to, on_event, accept_db_risk=True)
        else:
            record = await agent.rollback(app, to, on_event)
        return record_done(record, "already_active")

    return work
