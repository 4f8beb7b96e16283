"""The per-host steps of fleet commands: stage (upload, delta upload or fetch), activate, rollback.

Each function returns a :data:`~cutover.controller.fleet.runner.HostWork` for the runner. A step
succeeds when the agent's operation succeeded; a failed operation is reported with its id and
the agent's reason, classified by the error class of that reason; the agent saying it already had the release
(``already_staged``, ``already_active``) is :attr:`HostStatus.UNCHANGED`, so re-running a push or
an activation is a no-op that still exits 0.

A stage from a local package with a :class:`~controller.delta.DeltaPlanner` asks each host which
contents it lacks and uploads only those (controller/delta.py), else the full package; every
stage reports its :class:`~controller.fleet.results.Transfer` (bytes sent and saved).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cutover.controller.delta import MAX_DIGESTS, DeltaPlanner
from cutover.controller.fleet.agents import AgentPort, OpRecord
from cutover.controller.fleet.results import HostStatus, Transfer, classify, host_exit_code
from cutover.controller.fleet.runner import Done, HostWork

__all__ = ["activate_step", "record_done", "rollback_step", "stage_step"]


def record_done(record: OpRecord, unchanged_flag: str, transfer: Transfer | None = None) -> Done:
    """What a finished operation's record means for its host (``unchanged_flag``: the result
    field that says nothing had to be done; ``transfer``: a stage's bytes on the wire)."""
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
            transfer=transfer,
        )
    return Done(
        status=HostStatus.UNCHANGED if result.get(unchanged_flag) else HostStatus.OK,
        message=str(result.get("message", "")),
        operation=record.id,
        version=result.get("version"),
        current=result.get("current"),
        previous=result.get("previous"),
        transfer=transfer,
    )


class _OnceDigest:
    """The package's SHA-256 and size, computed once (off the loop) however many hosts upload it."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._lock = asyncio.Lock()
        self._value: tuple[bytes, int] | None = None

    async def get(self) -> tuple[bytes, int]:
        async with self._lock:
            if self._value is None:
                self._value = await asyncio.to_thread(_file_sha256, self._path)
            return self._value


def _file_sha256(path: Path) -> tuple[bytes, int]:
    with path.open("rb") as fh:
        return hashlib.file_digest(fh, "sha256").digest(), os.fstat(fh.fileno()).st_size


def stage_step(
    app: str,
    version: str,
    *,
    package: Path | None = None,
    url: str | None = None,
    delta: DeltaPlanner | None = None,
) -> HostWork:
    """Stage ``version`` from a local ``package`` (uploaded; hashed once for all hosts, each agent
    still checks the body against the signed digest) or a ``url`` the agent fetches. With
    ``delta`` (made for ``package``), each host gets only the contents it lacks."""
    if (package is None) == (url is None):
        raise ValueError("stage_step needs exactly one of package and url")

    digest = _OnceDigest(package if package is not None else Path())

    async def full(agent: AgentPort, on_event: Any, path: Path, reason: str) -> Done:
        sha256, size = await digest.get()
        record = await agent.upload(app, version, path, sha256, on_event)
        transfer = Transfer(
            mode="full", sent_bytes=size, package_bytes=size, saved_bytes=0, reason=reason
        )
        return record_done(record, "already_staged", transfer)

    async def thin(agent: AgentPort, on_event: Any, planner: DeltaPlanner) -> Done:
        digests = await planner.digests()
        if planner.thin_package:
            return await full(agent, on_event, planner.package, "a thin package (--base)")
        if len(digests) > MAX_DIGESTS:
            return await full(agent, on_event, planner.package, "too many files for a delta")
        missing = await agent.missing(app, version, digests)
        if missing is None:
            return await full(agent, on_event, planner.package, "the agent has no delta support")
        if digests and len(missing) == len(digests):
            return await full(agent, on_event, planner.package, "the host holds none of it")
        up = await planner.container(missing)
        record = await agent.upload(app, version, up.path, up.sha256, on_event)
        failure = record.failure()
        if failure is not None and failure.code == "base_missing":  # pruned in between
            return await full(agent, on_event, planner.package, "the host lost a base file")
        total = planner.package_size
        transfer = Transfer(
            mode="delta",
            sent_bytes=up.size,
            package_bytes=total,
            saved_bytes=max(total - up.size, 0),
            files_sent=up.files,
        )
        return record_done(record, "already_staged", transfer)

    async def work(agent: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
        if package is not None and delta is not None:
            return await thin(agent, on_event, delta)
        if package is not None:
            return await full(agent, on_event, package, "")
        record = await agent.fetch(app, version, str(url), on_event)
        return record_done(
            record,
            "already_staged",
            Transfer(mode="fetch", sent_bytes=0, package_bytes=0, saved_bytes=0),
        )

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
