"""Run one step on many hosts with bounded concurrency; every host gets its own result.

:class:`FleetRunner` opens an :class:`~cutover.controller.fleet.agents.AgentPort` per host, runs
the step's coroutine under a semaphore (``max_parallel``), translates the agent's operation events
into a small fleet event vocabulary, and turns whatever happened into a
:class:`~cutover.controller.fleet.results.HostResult`. A host that fails is reported with the
agent's reason and never stops or hides the others.

Events handed to the sink (also the NDJSON stream of ``--json``; docs/controller.md):

* ``host.start`` {host, action}
* ``host.progress`` {host, step: upload|download|extract, done, total} — at each tenth of the way
* ``host.phase`` {host, phase, detail} — verified, extracted, hooks, health, flipped, reverting, ...
* ``host.output`` {host, hook, line} — a hook's output line
* ``host.result`` — a :class:`HostResult`
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from cutover.agent.errors import CutoverError
from cutover.controller.fleet.agents import AgentPort
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.results import (
    FleetResult,
    HostResult,
    HostStatus,
    Transfer,
    classify,
    host_exit_code,
)

__all__ = ["Done", "EventSink", "FleetRunner", "HostWork", "now_iso"]

_T = TypeVar("_T")

EventSink = Callable[[dict[str, Any]], None]


def now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class Done:
    """What a step reports about a host whose agent ran the operation (succeeded or not)."""

    status: HostStatus = HostStatus.OK
    error: str | None = None  # the agent's reason code when the operation failed
    exit_code: int = 0  # results.host_exit_code of the failure
    message: str = ""
    operation: str | None = None
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    transfer: Transfer | None = None  # a stage step's bytes on the wire


HostWork = Callable[[AgentPort, Callable[[dict[str, Any]], None]], Awaitable[Done]]

# agent event -> (fleet phase, detail fields)
_PHASES: dict[str, tuple[str, tuple[str, ...]]] = {
    "fetch.start": ("downloading", ("url",)),
    "upload.resumed": ("upload resumed", ("attempt", "offset", "why")),  # controller/upload.py
    "verify.done": ("verified", ("signers",)),
    "extract.done": ("extracted", ("bytes",)),
    "hooks.start": ("hooks", ("phase", "count")),
    "hooks.done": ("hooks done", ("phase",)),
    "health.start": ("health", ("phase", "checks")),
    "health.done": ("health done", ("phase", "status")),
    "checkpoint.done": ("checkpoint", ("ref",)),
    "flip": ("flipped", ("version", "previous")),
    "revert.start": ("reverting", ("reason",)),
    "revert.done": ("reverted", ("version",)),
    "stage.done": ("staged", ("version",)),
    "activate.done": ("activated", ("version",)),
    "rollback.done": ("rolled back", ("version",)),
}


class _Translator:
    """Agent operation events of one host -> fleet events (progress thinned to tenths)."""

    def __init__(self, host: str, sink: EventSink) -> None:
        self.host = host
        self.sink = sink
        self._tenth: dict[str, int] = {}

    def __call__(self, event: dict[str, Any]) -> None:
        name = str(event.get("event", ""))
        if name == "progress":
            done, total = int(event.get("done") or 0), int(event.get("total") or 0)
            step = str(event.get("step", ""))
            tenth = 10 if total <= 0 or done >= total else done * 10 // total
            if tenth > self._tenth.get(step, -1):
                self._tenth[step] = tenth
                self.sink(
                    {
                        "event": "host.progress",
                        "host": self.host,
                        "step": step,
                        "done": done,
                        "total": total,
                    }
                )
        elif name == "hook.output":
            self.sink(
                {
                    "event": "host.output",
                    "host": self.host,
                    "hook": event.get("hook"),
                    "line": event.get("line"),
                }
            )
        elif name in _PHASES:
            phase, keys = _PHASES[name]
            detail = {k: event[k] for k in keys if k in event}
            self.sink({"event": "host.phase", "host": self.host, "phase": phase, "detail": detail})


class FleetRunner:
    """Runs steps over ``hosts``; ``connect`` opens one agent port per host per step.

    Args:
        hosts: the selection, in order (results keep that order).
        connect: host -> :class:`AgentPort` (tests and engines inject their own).
        max_parallel: hosts worked on at once.
        sink: receives every event (with ``ts``).
    """

    def __init__(
        self,
        hosts: list[HostSpec],
        connect: Callable[[HostSpec], AgentPort],
        *,
        max_parallel: int,
        sink: EventSink,
    ) -> None:
        self.hosts = hosts
        self._connect = connect
        self._limit = asyncio.Semaphore(max_parallel)
        self._sink = sink

    def emit(self, event: dict[str, Any]) -> None:
        self._sink({"ts": now_iso(), **event})

    async def run(
        self,
        action: str,
        app: str,
        version: str | None,
        work: HostWork,
        hosts: list[HostSpec] | None = None,
    ) -> FleetResult:
        """Run ``work`` on every host (or on ``hosts``); return the per-host results."""
        chosen = self.hosts if hosts is None else hosts
        results = await asyncio.gather(*(self._one(action, h, work) for h in chosen))
        return FleetResult.of(action, app, version, list(results))

    async def read(self, fn: Callable[[AgentPort], Awaitable[_T]]) -> dict[str, _T | CutoverError]:
        """Ask every host something (no operation): host name -> answer, or the error it gave."""

        async def one(host: HostSpec) -> _T | CutoverError:
            async with self._limit:
                try:
                    port = self._connect(host)
                except CutoverError as exc:
                    return exc
                try:
                    return await fn(port)
                except CutoverError as exc:
                    return exc
                finally:
                    await port.close()

        answers = await asyncio.gather(*(one(h) for h in self.hosts))
        return {h.name: a for h, a in zip(self.hosts, answers, strict=True)}

    async def _one(self, action: str, host: HostSpec, work: HostWork) -> HostResult:
        async with self._limit:
            self.emit({"event": "host.start", "host": host.name, "action": action})
            started = time.monotonic()
            try:
                port = self._connect(host)
            except CutoverError as exc:
                return self._failed(action, host, started, HostStatus.FAILED, exc)
            try:
                done = await work(port, _Translator(host.name, self.emit))
            except CutoverError as exc:
                return self._failed(action, host, started, classify(exc), exc)
            except Exception as exc:  # one host's surprise must not hide the others' results
                return self._result(
                    action, host, started, HostStatus.FAILED, "internal", f"{host.name}: {exc!r}"
                )
            finally:
                await port.close()
            return self._result(action, host, started, done.status, done.error, done.message, done)

    def _failed(
        self, action: str, host: HostSpec, started: float, status: HostStatus, exc: CutoverError
    ) -> HostResult:
        code = host_exit_code(status, exc)
        return self._result(action, host, started, status, exc.code, str(exc), exit_code=code)

    def _result(
        self,
        action: str,
        host: HostSpec,
        started: float,
        status: HostStatus,
        error: str | None,
        message: str,
        done: Done | None = None,
        *,
        exit_code: int | None = None,
    ) -> HostResult:
        if exit_code is None:
            exit_code = done.exit_code if done is not None else host_exit_code(status)
        res = HostResult(
            host=host.name,
            url=host.url,
            action=action,
            status=status,
            exit_code=exit_code,
            error=error,
            message=message,
            operation=done.operation if done else None,
            version=done.version if done else None,
            current=done.current if done else None,
            previous=done.previous if done else None,
            duration_s=round(time.monotonic() - started, 3),
            transfer=done.transfer if done else None,
        )
        self.emit({"event": "host.result", **res.model_dump(mode="json")})
        return res
