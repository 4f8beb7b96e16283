"""The unit of work every lifecycle operation goes through exactly once.

::

    lock (flock, fails at once with LockedError) → re-read the journal head → load the state
    → crash recovery → the operation's work (it saves through the unit) → unlock
    → one canonical log line (``lifecycle_operation``: app, op, outcome, error code, duration)

The journal caches its chain head, which is only valid while the app lock is held: the unit
forgets it right after locking, so entries chain onto what another process (the CLI, the
daemon) appended meanwhile.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

from cutover.agent._util.lazylog import get_logger
from cutover.agent.host.lock import AppLock
from cutover.agent.host.state import AppState, Pending
from cutover.agent.lifecycle.context import AppContext, OpResult
from cutover.agent.lifecycle.recovery import Recovery

__all__ = ["UnitOfWork", "unit_of_work"]

log = get_logger(__name__)


class UnitOfWork:
    """One operation on one app, holding its lock: the state, what recovery did, the result."""

    def __init__(self, ctx: AppContext, op: str, state: AppState, recovered: list[str]) -> None:
        self.ctx = ctx
        self.op = op
        self.state = state
        self.recovered = recovered
        self.outcome: OpResult | None = None

    def result(self, op: str | None = None, **fields: Any) -> OpResult:
        """The operation's result, with what recovery did; remembered for the log line.

        ``current`` and ``previous`` default to the state's, so every result shows both."""
        fields.setdefault("current", self.state.current)
        fields.setdefault("previous", self.state.previous)
        self.outcome = OpResult(op or self.op, self.ctx.app, recovered=self.recovered, **fields)
        return self.outcome

    def emit(self, event: str, **fields: Any) -> None:
        self.ctx.emit(event, **fields)

    async def log(self, event: str, **fields: Any) -> None:
        await self.ctx.log(event, **fields)

    async def save(self) -> None:
        """Write the state (atomically, recording the journal head)."""
        await self.ctx.save(self.state)

    async def write_intent(
        self,
        op: Literal["activate", "rollback"],
        old: str | None,
        target: str,
        **fields: Any,
    ) -> Pending:
        """Save the write-ahead intent of a flip, then journal it; returns the intent."""
        actor = self.ctx.actor
        intent = Pending(
            op=op, op_id=uuid.uuid4().hex[:12], from_version=old, to_version=target, actor=actor
        )
        self.state.pending = intent
        await self.save()
        await self.log(
            f"{op}.intent", version=target, previous=old, op_id=intent.op_id, actor=actor, **fields
        )
        return intent


@asynccontextmanager
async def unit_of_work(
    ctx: AppContext, recovery: Recovery, op: str, holder: str | None = None
) -> AsyncIterator[UnitOfWork]:
    """Lock, load and recover; yield the unit; unlock and log one line.

    Args:
        op: the operation's name (``op.start`` event, log line).
        holder: what the lock file says to a refused second operation (default ``op``).

    Raises:
        ConfigError: the app root was never initialised.
        LockedError: another operation holds the app.
        DriftError: recovery found a host only a human can fix.
    """
    ctx.layout.check(ctx.app)
    lock = AppLock(ctx.layout.lock_file, ctx.app, holder or op)
    lock.acquire()
    started = time.monotonic()
    uow: UnitOfWork | None = None
    outcome, error = "succeeded", None
    try:
        ctx.ledger.forget_head()
        state = await asyncio.to_thread(ctx.ledger.load)
        recovered = await recovery.run(state)
        ctx.emit("op.start", op=op)
        uow = UnitOfWork(ctx, op, state, recovered)
        yield uow
    except BaseException as exc:
        outcome = "cancelled" if isinstance(exc, asyncio.CancelledError) else "failed"
        error = getattr(exc, "code", type(exc).__name__)
        raise
    finally:
        lock.release()
        result = uow.outcome if uow is not None else None
        if result is not None and not result.ok and outcome == "succeeded":
            outcome = "failed"
        # A failed operation is an error in the journal (`journalctl -p err`), a cancelled one a
        # warning; the unit's line is where a failure is logged once, whatever the caller.
        level = {"succeeded": "info", "cancelled": "warning"}.get(outcome, "error")
        getattr(log, level)(
            "lifecycle_operation",
            app=ctx.app,
            op=op,
            actor=ctx.actor,
            outcome=outcome,
            error=error,
            version=result.version if result is not None else None,
            current=uow.state.current if uow is not None else None,
            recovered=len(uow.recovered) if uow is not None else 0,
            duration_s=round(time.monotonic() - started, 3),
        )
