"""Plumbing of the lifecycle manager: locking, events, hook and health runners, crash recovery.

:class:`ManagerBase` holds what every operation of :class:`agent.lifecycle.AppManager` shares.
Recovery (:meth:`ManagerBase.recover`) runs under the app lock at the start of every operation,
in the CLI and the daemon alike, and resolves what a killed operation left, from the state
file's write-ahead ``pending`` intent and the journal:

* ``pending`` activation, ``current`` still on the old release: dropped (nothing happened);
* ``pending`` activation, ``current`` already on the new release: flipped back, post_rollback
  hooks run, reported (the new release was never proven healthy);
* ``pending`` rollback after its flip: completed (rolling back is the safe direction);
* ``current`` flipped by hand: adopted as a rollback; ``current`` missing: restored to the
  recorded active release; anything else: refused with instructions (DriftError).
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import structlog

from cutover.agent.actions import hooks as hooksmod
from cutover.agent.config import AppSection
from cutover.agent.errors import CutoverError, DriftError, HookError, NotFoundError
from cutover.agent.host.lock import AppLock
from cutover.agent.host.state import AppState, Pending, ReleaseRecord, utcnow
from cutover.agent.host.store import ReleaseStore
from cutover.agent.package.manifest import HealthSpec, Hook
from cutover.agent.trust.policy import TrustPolicy
from cutover.agent.versions import Incomparable, is_older

__all__ = ["EventSink", "ManagerBase", "OpResult"]

log = structlog.get_logger(__name__)

EventSink = Callable[[dict[str, Any]], None]


def _no_events(_: dict[str, Any]) -> None:
    return None


@dataclass
class OpResult:
    """What an operation did, for the CLI's output and the API's operation record."""

    op: str
    app: str
    ok: bool = True
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    message: str = ""
    recovered: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "app": self.app,
            "ok": self.ok,
            "version": self.version,
            "current": self.current,
            "previous": self.previous,
            "message": self.message,
            "recovered": self.recovered,
            **self.details,
        }


class ManagerBase:
    """Plumbing shared by the lifecycle operations: lock, events, hooks, health, recovery."""

    def __init__(
        self,
        app: str,
        section: AppSection,
        policy: TrustPolicy,
        *,
        actor: str = "local",
        events: EventSink = _no_events,
    ) -> None:
        self.app = app
        self.section = section
        self.store = ReleaseStore(app, section, policy)
        self.actor = actor
        self.events = events

    # ------------------------------------------------------------------ plumbing
    def emit(self, event: str, **fields: Any) -> None:
        self.events({"event": event, "app": self.app, **fields})

    @contextmanager
    def _locked(self, operation: str) -> Iterator[AppLock]:
        lock = self.store.lock(operation)
        lock.acquire()
        try:
            yield lock
        finally:
            lock.release()

    def _hook_ctx(
        self, version: str, previous: str | None, release_dir: Path
    ) -> hooksmod.HookContext:
        return hooksmod.HookContext(
            app=self.app,
            version=version,
            release_dir=release_dir,
            previous_version=previous,
            shared_dir=self.store.layout.shared,
            path_env=self.section.hook_path,
            output_cap_bytes=self.section.hook_output_cap_bytes,
        )

    def _on_output(self, hook: str, line: str) -> None:
        self.emit("hook.output", hook=hook, line=line)

    async def _run_hooks(
        self, hooks: list[Hook], phase: str, ctx: hooksmod.HookContext
    ) -> list[dict[str, Any]]:
        if not hooks:
            return []
        self.emit("hooks.start", phase=phase, count=len(hooks))
        try:
            results = await hooksmod.run_hooks(hooks, phase, ctx, on_output=self._on_output)
        except HookError as exc:
            res = exc.results if isinstance(exc, hooksmod.HookFailedError) else []
            await asyncio.to_thread(
                self.store.log,
                "hooks.failed",
                phase=phase,
                version=ctx.version,
                error=str(exc),
                results=[r.to_json() for r in res],
            )
            raise
        out = [r.to_json() for r in results]
        await asyncio.to_thread(
            self.store.log, "hooks.done", phase=phase, version=ctx.version, results=out
        )
        self.emit("hooks.done", phase=phase)
        return out

    def _installed_record(self, state: AppState, version: str) -> ReleaseRecord:
        """The record of an installed release, or NotFoundError listing what is installed."""
        rec = state.releases.get(version)
        if rec is None or not rec.installed:
            raise NotFoundError(
                f"{self.app} {version} is not installed on this host (stage it first with "
                f"`cutover-agent stage PACKAGE`); installed: {_installed(state)}"
            )
        return rec

    async def _write_intent(
        self,
        state: AppState,
        op: Literal["activate", "rollback"],
        old: str | None,
        target: str,
        **fields: Any,
    ) -> str:
        """Save the write-ahead intent of a flip and journal it; returns the operation id."""
        op_id = uuid.uuid4().hex[:12]
        state.pending = Pending(
            op=op, op_id=op_id, from_version=old, to_version=target, actor=self.actor
        )
        await self._save(state)
        await asyncio.to_thread(
            self.store.log,
            f"{op}.intent",
            version=target,
            previous=old,
            op_id=op_id,
            actor=self.actor,
            **fields,
        )
        return op_id

    async def _post_rollback_noting(
        self, state: AppState, target: str, left: str | None, actions: list[str], when: str
    ) -> None:
        """Run post_rollback hooks during recovery; a failure is reported, never raised."""
        try:
            await self._post_rollback_hooks(state, target, left)
        except HookError as exc:
            actions.append(f"post_rollback hooks {when} failed: {exc}")

    async def _log_quietly(self, event: str, **fields: Any) -> None:
        """Journal on a failure path: a second failure (disk full) must not mask the first."""
        try:
            await asyncio.to_thread(self.store.log, event, **fields)
        except CutoverError:
            log.exception("journal_append_failed", app=self.app, journal_event=event)

    async def _save(self, state: AppState) -> None:
        await asyncio.to_thread(self.store.save, state)

    # ------------------------------------------------------------------ recovery
    async def recover(self, state: AppState) -> list[str]:
        """Resolve a crashed operation (caller holds the lock). Returns what was done."""
        actions = await asyncio.to_thread(self.store.recover, state)
        pending = state.pending
        if pending is not None:
            on_disk = self.store.read_current()
            if pending.op == "activate":
                if on_disk == pending.from_version and pending.phase == "intent":
                    actions.append(
                        f"activation of {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"before the flip; current stays {pending.from_version}"
                    )
                else:
                    if on_disk != pending.from_version:
                        await asyncio.to_thread(self.store.flip, pending.from_version)
                    failed = " (it had failed: marked bad)" if pending.phase == "reverting" else ""
                    actions.append(
                        f"activation of {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"after the flip{failed}; reverted current to "
                        f"{pending.from_version or '(none)'}"
                    )
                    state.current = pending.from_version
                    state.pending = None
                    left = state.releases.get(pending.to_version)
                    if left is not None and left.requires_migration:
                        actions.append(
                            f"{pending.to_version} may have migrated the database; it was NOT "
                            f"restored (checkpoint {left.checkpoint_ref!r})"
                        )
                    await self._save(state)
                    if pending.from_version is not None:
                        await self._post_rollback_noting(
                            state,
                            pending.from_version,
                            pending.to_version,
                            actions,
                            "after the revert",
                        )
            else:
                if on_disk == pending.to_version:
                    self._commit_rollback(state, pending.to_version)
                    actions.append(
                        f"rollback to {pending.to_version} (op {pending.op_id}) was interrupted "
                        "after the flip; completed it"
                    )
                    await self._save(state)
                    await self._post_rollback_noting(
                        state,
                        pending.to_version,
                        pending.from_version,
                        actions,
                        "after the completed rollback",
                    )
                else:
                    actions.append(
                        f"rollback to {pending.to_version} (op {pending.op_id}) was interrupted "
                        f"before the flip; current stays {on_disk}"
                    )
            state.pending = None
        on_disk = self.store.read_current()
        if on_disk != state.current:
            rec = state.releases.get(on_disk or "")
            if on_disk is not None and rec is not None and rec.installed:
                # An operator flipped by hand (the documented last-resort runbook): adopt it as a
                # rollback, so history and `previous` follow what is really live.
                actions.append(
                    f"current was switched outside Cutover from {state.current} to {on_disk}; "
                    "recorded it as a rollback"
                )
                self._commit_rollback(state, on_disk, stamp=False)
            elif (
                on_disk is None
                and state.current is not None
                and self.store.layout.release(state.current).is_dir()
            ):
                await asyncio.to_thread(self.store.flip, state.current)
                actions.append(
                    f"the current link was missing; restored it to {state.current} (the recorded "
                    "active release)"
                )
            else:
                raise DriftError(
                    f"{self.store.layout.current} points at {on_disk or 'nothing'!r}, which is not an installed "
                    f"release (the state says {state.current!r}); inspect the host, then point it "
                    "at a release by hand: ln -sfn releases/VERSION current.tmp && "
                    "mv -T current.tmp current"
                )
        if actions:
            for a in actions:
                self.emit("recovery", action=a)
            await asyncio.to_thread(self.store.log, "recovery", actions=actions)
            await self._save(state)
            log.warning("recovered", app=self.app, actions=actions)
        return actions

    async def _begin(self, op: str) -> tuple[AppState, list[str]]:
        self.store.journal.invalidate()  # the lock is ours now; re-read the chain head
        state = await asyncio.to_thread(self.store.load)
        recovered = await self.recover(state)
        self.emit("op.start", op=op)
        return state, recovered

    async def recover_only(self) -> OpResult:
        with self._locked("recover"):
            state, recovered = await self._begin("recover")
            return OpResult("recover", self.app, current=state.current, recovered=recovered)

    # ------------------------------------------------------------------ health helper
    async def _health(
        self,
        phase_name: str,
        health: HealthSpec,
        version: str,
        release_dir: Path,
        offsets: dict[str, int],
    ) -> dict[str, Any]:
        phase = health.staged if phase_name == "staged" else health.live
        probe = health.version_probe if phase_name == "live" else None
        if not phase.checks and probe is None:
            return {"phase": phase_name, "status": "pass", "rounds": 0, "checks": 0}
        from cutover.agent.actions import (
            health as healthmod,  # imports aiohttp: only when checks run
        )

        hctx = healthmod.HealthContext(
            release_dir=release_dir,
            version=version,
            log_offsets=offsets,
            env=self._hook_ctx(version, None, release_dir).env(f"health_{phase_name}"),
        )
        self.emit("health.start", phase=phase_name, checks=len(phase.checks))

        def on_event(r: healthmod.CheckResult) -> None:
            self.emit(
                "health.check", phase=phase_name, name=r.name, status=r.status, detail=r.detail
            )

        result = await healthmod.run_phase(phase_name, phase, hctx, on_event=on_event)
        out: dict[str, Any] = dict(result.to_json())
        if probe is not None and result.status == "pass":
            seen = await healthmod.probe_version(probe, hctx)
            out["version_probe"] = {"status": seen.status, "detail": seen.detail}
            if seen.status != "pass":
                out["status"] = seen.status
        self.emit("health.done", phase=phase_name, status=out["status"])
        return out

    async def _post_rollback_hooks(self, state: AppState, target: str, left: str | None) -> None:
        try:
            spec = await asyncio.to_thread(self.store.load_runtime, state, target)
        except CutoverError:
            return
        ctx = self._hook_ctx(target, left, self.store.layout.release(target))
        await self._run_hooks(
            [*spec.hooks.post_rollback, *self.section.hooks.post_rollback], "post_rollback", ctx
        )

    # ------------------------------------------------------------------ rollback
    def _commit_rollback(self, state: AppState, target: str, *, stamp: bool = True) -> None:
        state.current = target
        rec = state.releases.get(target)
        if stamp and rec is not None and rec.activated_at is None:
            rec.activated_at, rec.activated_by = utcnow(), self.actor
        if target in state.history:
            while state.history and state.history[-1] != target:
                state.history.pop()
        else:
            state.history.append(target)
        state.pending = None


def _crossed(state: AppState, target: str) -> list[str]:
    """Releases a rollback to ``target`` leaves behind, oldest first."""
    if target in state.history:
        idx = len(state.history) - 1 - state.history[::-1].index(target)
        crossed = state.history[idx + 1 :]
    else:
        crossed = []
    if state.current and state.current not in crossed:
        crossed.append(state.current)
    return crossed


def _newer(a: str, b: str) -> bool:
    try:
        return is_older(b, a)
    except Incomparable:
        return False


def _installed(state: AppState) -> str:
    return ", ".join(r.version for r in state.installed()) or "(none)"


def _log_offsets(health: HealthSpec, release_dir: Path) -> dict[str, int]:
    """Log sizes before the flip, so live log checks see only lines written after it."""
    if not any(c.type == "log" for c in health.live.checks):
        return {}
    from cutover.agent.actions.health import log_offsets

    return log_offsets(health.live.checks, release_dir)


def _health_summary(result: dict[str, Any]) -> str:
    failing = [
        f"{c.get('name')}: {c.get('detail')}"
        for c in result.get("last", [])
        if c.get("status") != "pass"
    ]
    probe = result.get("version_probe")
    if probe and probe.get("status") != "pass":
        failing.append(f"version probe: {probe.get('detail')}")
    return "; ".join(failing) or str(result.get("status"))
