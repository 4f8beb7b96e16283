"""Operations of the agent API: asyncio tasks with an id, a record and an event stream.

A mutating request (stage, fetch, activate, rollback, delete) answers ``202`` with an operation id
at once; the work runs as a task registered here. Its record (``GET /v1/operations/{id}``) and
its events (``GET /v1/operations/{id}/events``: every past event, then live ones until the end)
outlive the task for a while (the newest :data:`KEEP_FINISHED` finished operations are kept).

Rules:

* one operation per app inside this process: :meth:`OperationRegistry.busy` names the running one
  (the app's flock excludes other processes, e.g. the on-host CLI);
* an operation's failure is reported in its record (``status``, ``error``), never by raising out
  of the task; the request that started it already got its ``202``;
* events are appended on the event loop thread only (AppManager may emit from worker threads:
  those are handed over with ``call_soon_threadsafe``), and they are bounded: past
  :data:`MAX_EVENTS` events or :data:`MAX_OUTPUT_BYTES` of hook output, ``hook.output`` lines are
  dropped and counted (the journal keeps each hook's output tail);
* every operation ends with one ``operation.done`` event and one canonical ``operation`` log line.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog

from cutover.agent.api_models import ErrorBody, OperationRecord
from cutover.agent.daemon.metrics import Metrics
from cutover.agent.errors import (
    CancelledOperationError,
    CutoverError,
    InternalError,
    LockedError,
    NotFoundError,
    OperationalError,
)
from cutover.agent.lifecycle.manager import OpResult

__all__ = [
    "KEEP_FINISHED",
    "MAX_EVENTS",
    "MAX_OUTPUT_BYTES",
    "Operation",
    "OperationRegistry",
    "error_body",
    "new_operation_id",
]

log = structlog.get_logger(__name__)

KEEP_FINISHED = 200
MAX_EVENTS = 5_000
MAX_OUTPUT_BYTES = 256 * 1024

EventSink = Callable[[dict[str, Any]], None]
Runner = Callable[["Operation", EventSink], Awaitable[OpResult]]


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def new_operation_id() -> str:
    """A fresh operation id: 16 lowercase hex characters (64 random bits)."""
    return secrets.token_hex(8)


def error_body(exc: CutoverError) -> dict[str, Any]:
    """The JSON error object of the API, from the registry (agent/errors.py).

    ``{"error": code, "kind": registry code, "message": ...}`` (+ ``holder`` for ``locked``):
    :class:`agent.api_models.ErrorBody`, which the client parses back into the same class.
    """
    return ErrorBody.of(exc).to_json()


@dataclass(eq=False)
class Operation:
    """One operation: its record, its events, and the task that runs it."""

    id: str
    op: str
    app: str
    version: str | None
    actor: str
    created_at: str = field(default_factory=_now)
    status: str = "running"  # running | succeeded | failed
    phase: str = "queued"  # queued | download | run (fetch operations download first)
    finished_at: str | None = None
    duration_s: float | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    events: list[dict[str, Any]] = field(default_factory=list)
    dropped_events: int = 0
    output_bytes: int = 0
    task: asyncio.Task[None] | None = None
    _started: float = field(default_factory=time.monotonic)
    _changed: asyncio.Event = field(default_factory=asyncio.Event)
    _open_hooks: str | None = None

    @property
    def done(self) -> bool:
        return self.status != "running"

    def record(self) -> dict[str, Any]:
        """The JSON record served by ``GET /v1/operations/{id}`` (:class:`OperationRecord`)."""
        return OperationRecord.model_validate(
            {
                "id": self.id,
                "op": self.op,
                "app": self.app,
                "version": self.version,
                "actor": self.actor,
                "status": self.status,
                "phase": self.phase,
                "created_at": self.created_at,
                "finished_at": self.finished_at,
                "duration_s": self.duration_s,
                "result": self.result,
                "error": self.error,
                "events": len(self.events),
                "dropped_events": self.dropped_events,
            }
        ).to_json()

    def add_event(self, event: dict[str, Any]) -> None:
        """Append one event (event loop thread only) and wake the followers."""
        if event.get("event") == "hook.output":
            size = len(str(event.get("line", "")))
            if len(self.events) >= MAX_EVENTS or self.output_bytes + size > MAX_OUTPUT_BYTES:
                self.dropped_events += 1
                return
            self.output_bytes += size
        self.events.append({"seq": len(self.events) + 1, "ts": _now(), **event})
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def follow(self) -> AsyncIterator[dict[str, Any]]:
        """Every event from the first, then live ones; ends after ``operation.done``."""
        i = 0
        while True:
            changed = self._changed  # captured before the check: no await in between
            while i < len(self.events):
                yield self.events[i]
                i += 1
            if self.done and i >= len(self.events):
                return
            await changed.wait()

    async def wait(self) -> None:
        """Return once the operation has finished."""
        async for _ in self.follow():
            pass


class OperationRegistry:
    """Starts operations as tasks, keeps their records, drains them at shutdown."""

    def __init__(self, metrics: Metrics, *, keep_finished: int = KEEP_FINISHED) -> None:
        self.metrics = metrics
        self.keep_finished = keep_finished
        self._ops: OrderedDict[str, Operation] = OrderedDict()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None

    # ------------------------------------------------------------------ lookup
    def get(self, op_id: str) -> Operation:
        """The operation ``op_id``.

        Raises:
            NotFoundError: no such operation (unknown, or finished long ago and forgotten).
        """
        op = self._ops.get(op_id)
        if op is None:
            raise NotFoundError(
                f"no operation {op_id!r} on this agent (ids are forgotten after "
                f"{self.keep_finished} newer operations finish, and at restart)"
            )
        return op

    def running(self) -> list[Operation]:
        return [op for op in self._ops.values() if not op.done]

    def busy(self, app: str) -> dict[str, object] | None:
        """Who holds ``app`` inside this process: its running operation, if any.

        An upload in progress holds nothing: the app is taken when its stage operation starts,
        once the body is spooled (a slow upload cannot hold the app).
        """
        for op in self._ops.values():
            if op.app == app and not op.done:
                return {"operation": op.op, "id": op.id, "since": op.created_at, "agent": "api"}
        return None

    def check_free(self, app: str) -> None:
        """Raise :class:`LockedError` if an operation of this process holds ``app``."""
        holder = self.busy(app)
        if holder is not None:
            raise LockedError(
                f"app {app!r} is busy: {holder.get('operation')} (operation {holder.get('id')}) "
                "is running on this agent; wait for it to finish, then retry",
                holder=holder,
            )

    # ------------------------------------------------------------------ running
    def sink(self, op: Operation) -> EventSink:
        """An event callback for AppManager that is safe to call from worker threads."""
        loop = asyncio.get_running_loop()
        loop_thread = threading.get_ident()

        def emit(event: dict[str, Any]) -> None:
            if threading.get_ident() == loop_thread:
                self._observe(op, event)
            else:
                loop.call_soon_threadsafe(self._observe, op, event)

        return emit

    def _observe(self, op: Operation, event: dict[str, Any]) -> None:
        name = event.get("event")
        phase = str(event.get("phase", ""))
        if name == "hooks.start":
            if op._open_hooks is not None:  # a phase that never reported done has failed
                self.metrics.hooks.labels(op.app, op._open_hooks, "fail").inc()
            op._open_hooks = phase
        elif name == "hooks.done":
            self.metrics.hooks.labels(op.app, phase, "pass").inc()
            op._open_hooks = None
        elif name == "health.check":
            self.metrics.health_checks.labels(op.app, phase, str(event.get("status"))).inc()
        elif name == "health.done":
            self.metrics.health_phases.labels(op.app, phase, str(event.get("status"))).inc()
        op.add_event(event)

    def start(
        self,
        op_name: str,
        app: str,
        version: str | None,
        actor: str,
        runner: Runner,
        *,
        op_id: str | None = None,
        cleanup: Callable[[], Awaitable[None]] | None = None,
        on_done: Callable[[Operation], Awaitable[None]] | None = None,
    ) -> Operation:
        """Register an operation and start ``runner(op, sink)`` as a task.

        Args:
            op_name: stage, fetch, activate, rollback or delete.
            app: the app it works on (one running operation per app).
            version: the version it concerns, if any.
            actor: who asked (the controller key's name), recorded in the journal.
            runner: the coroutine doing the work; it returns the AppManager's result.
            op_id: a pre-allocated id (uploads name their file after it).
            cleanup: awaited after the runner, whatever happened (e.g. remove the upload file).
            on_done: awaited after cleanup (e.g. refresh the release metrics).

        Raises:
            LockedError: an operation of this process holds the app already.
        """
        self.check_free(app)
        op = Operation(
            id=op_id or new_operation_id(), op=op_name, app=app, version=version, actor=actor
        )
        self._ops[op.id] = op
        self._forget_old()
        op.task = asyncio.create_task(self._run(op, runner, cleanup, on_done), name=f"op-{op.id}")
        self.metrics.operations_running.inc()
        return op

    async def _run(
        self,
        op: Operation,
        runner: Runner,
        cleanup: Callable[[], Awaitable[None]] | None,
        on_done: Callable[[Operation], Awaitable[None]] | None,
    ) -> None:
        structlog.contextvars.bind_contextvars(
            operation=op.id, op=op.op, app=op.app, version=op.version
        )
        outcome = "failed"
        try:
            op.add_event(
                {"event": "operation.start", "op": op.op, "app": op.app, "version": op.version}
            )
            result = await runner(op, self.sink(op))
            op.result = result.to_json()
            outcome = "succeeded" if result.ok else "failed"
            if not result.ok:
                op.error = error_body(OperationalError(result.message))
        except CutoverError as exc:
            op.error = error_body(exc)
        except asyncio.CancelledError:
            outcome = "cancelled"
            op.error = error_body(
                CancelledOperationError(
                    "the agent shut down before the operation finished; its effects were "
                    "reverted or will be recovered at the next start"
                )
            )
            raise
        except Exception as exc:
            log.exception("operation_crashed")
            op.error = error_body(InternalError(f"{type(exc).__name__}: {exc}"))
        finally:
            await self._finish(op, outcome, cleanup, on_done)

    async def _finish(
        self,
        op: Operation,
        outcome: str,
        cleanup: Callable[[], Awaitable[None]] | None,
        on_done: Callable[[Operation], Awaitable[None]] | None,
    ) -> None:
        for step in (cleanup, None if on_done is None else (lambda: on_done(op))):
            if step is None:
                continue
            try:
                await asyncio.shield(step())
            except Exception:
                log.exception("operation_cleanup_failed")
        if op._open_hooks is not None:
            self.metrics.hooks.labels(
                op.app, op._open_hooks, "cancelled" if outcome == "cancelled" else "fail"
            ).inc()
            op._open_hooks = None
        op.duration_s = round(time.monotonic() - op._started, 3)
        op.finished_at = _now()
        op.status = "succeeded" if outcome == "succeeded" else "failed"
        self.metrics.operations_running.dec()
        self.metrics.operations.labels(op.op, op.app, outcome).inc()
        self.metrics.operation_seconds.labels(op.op, op.app).observe(op.duration_s)
        op.add_event(
            {"event": "operation.done", "status": op.status, "result": op.result, "error": op.error}
        )
        level = {"succeeded": "info", "cancelled": "warning"}.get(outcome, "error")
        getattr(log, level)(
            "operation",
            result=outcome,
            error=(op.error or {}).get("error"),
            message=(op.error or {}).get("message"),
            duration_s=op.duration_s,
            actor=op.actor,
        )

    def _forget_old(self) -> None:
        finished = [k for k, op in self._ops.items() if op.done]
        for k in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._ops[k]

    # ------------------------------------------------------------------ shutdown
    def cancel(self, op: Operation) -> None:
        if op.task is not None and not op.task.done():
            op.task.cancel()

    async def drain(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for running operations; True if all finished in time."""
        tasks = [op.task for op in self.running() if op.task is not None]
        if not tasks:
            return True
        _, pending = await asyncio.wait(tasks, timeout=timeout_s)
        return not pending

    async def cancel_all(self) -> None:
        """Cancel every running operation once and wait for each to unwind (reverts included).

        Cancelling once matters: AppManager shields its revert, and a second cancel would only
        interrupt our wait for it, never the revert itself.
        """
        tasks = [op.task for op in self.running() if op.task is not None and not op.task.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
