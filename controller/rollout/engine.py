"""The rollout engine: canary, then waves, each gated by health and a bake, under deadlines.

Order of a rollout (docs/rollouts.md has the timeline):

1. **leases**: every host of the selection is leased for this rollout (:mod:`.leases`); one
   refusal stops the rollout before anything changes (409 names the holder);
2. **staged check**: every host must hold the release staged (or already run it): preparing is
   separate from activating (``push`` / ``deploy --rollout`` stage first);
3. **waves** (:mod:`.waves`): wave 0 is the canary. Before each wave its agents are asked
   whether a freeze window would refuse the version: if one would, the rollout **pauses before
   the wave** (naming the window, its end and ``cutover rollout --resume ID``). That question
   is asked while the previous wave runs (its answer is used if that wave took at most
   ``FREEZE_FRESH_S``, else it is asked again); a window that starts in between makes the agents
   refuse ``frozen``, which pauses the same way. Each wave's hosts are activated in parallel
   under the deadlines of :mod:`.deadlines`, then the wave bakes;
4. **decision** after each wave (pure, :mod:`.decision`): a canary failure, or more failures than
   the budget, reverts every host the rollout touched, all at once (:mod:`.revert`: no canary, no
   bake replayed); a failure within the budget isolates that host and the rollout goes on; an
   *inconclusive* live health result or a ``frozen`` refusal pauses the rollout (neither is a
   failure: no budget, no revert);
5. ``--pause-after-canary`` pauses after wave 0; ``cutover promote ID`` resumes, ``abort``
   reverts. A **paused rollout keeps its leases** (renewed for ``pause_lease_s``, default 1 h),
   so another rollout is refused naming it until it is promoted, resumed or aborted; abort and
   every other ending release them.

Every wait has a deadline and every deadline an action, printed in the ``wave.start`` event and the
live table. Progress goes to the ``sink`` as events (the NDJSON stream of ``--json``), the state
to the :class:`RolloutStore` (so ``--resume`` continues after the CLI died).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cutover.agent.errors import CutoverError
from cutover.controller.fleet.agents import AgentPort, AppView
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.runner import EventSink, now_iso
from cutover.controller.rollout.context import RolloutContext
from cutover.controller.rollout.decision import Decision, decide
from cutover.controller.rollout.leases import PAUSE_LEASE_S, LeaseKeeper
from cutover.controller.rollout.plan import failure_budget
from cutover.controller.rollout.report import HostFailure, RolloutSummary
from cutover.controller.rollout.revert import Reverter, needs_revert
from cutover.controller.rollout.store import RolloutRecord, RolloutStatus, RolloutStore
from cutover.controller.rollout.waves import Tally, WaveOutcome, WaveRunner

__all__ = ["RolloutEngine"]

_RETRYABLE = ("staged", "failed")  # a release an activation may (re)try on that host
FREEZE_FRESH_S = 5.0  # a freeze state read while the previous wave ran is used if that recent


@dataclass
class _Prefetch:
    started: float
    task: asyncio.Future[dict[str, Any]]


async def _cancel(task: asyncio.Future[Any]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError, CutoverError):
        await task


class RolloutEngine:
    """Runs (or resumes) one rollout recorded in ``store``.

    Args:
        hosts: the rollout's hosts (every host of its waves).
        connect: host -> agent port (the CLI's signed client; tests may inject theirs).
        store: the local state.
        sink: receives every event (``ts`` is added).
        leases: holds the agents' leases for the rollout (None: no leases, e.g. a unit test).
        pause_lease_s: how long a paused rollout keeps its leases.
    """

    name = "rollout"

    def __init__(
        self,
        hosts: list[HostSpec],
        connect: Callable[[HostSpec], AgentPort],
        store: RolloutStore,
        sink: EventSink,
        leases: LeaseKeeper | None = None,
        *,
        pause_lease_s: float = PAUSE_LEASE_S,
    ) -> None:
        by_name = {h.name: h for h in hosts}
        self._hosts = by_name
        self._store = store
        self._sink = sink
        self._leases = leases
        self._pause_lease_s = pause_lease_s
        ctx = RolloutContext(by_name, connect, store, sink, leases)
        self._waves = WaveRunner(ctx)
        self._revert = Reverter(ctx)

    def emit(self, event: dict[str, Any]) -> None:
        self._sink({"ts": now_iso(), **event})

    # ------------------------------------------------------------------ the whole rollout
    async def run(self, rid: str, *, promote: bool = False) -> RolloutSummary:
        """Run rollout ``rid`` from its next wave; ``promote``: go past a pause after the canary."""
        if promote:
            self._store.set_promoted(rid)
        rec = self._store.get(rid)
        p = rec.params
        tally = Tally(desired=sum(len(w) for w in rec.waves))
        budget = failure_budget(p.max_failures, tally.desired)
        self.emit(
            {
                "event": "rollout.start",
                "rollout": rid,
                "app": rec.app,
                "version": rec.version,
                "waves": rec.waves,
                "next_wave": rec.wave,
                "budget": budget,
                "params": p.model_dump(mode="json"),
            }
        )
        self._store.set_status(rid, RolloutStatus.RUNNING)
        # the staged check's reads go out with the lease requests (reads change nothing)
        reading = asyncio.ensure_future(self._waves.read_all(rec.app, list(self._hosts)))
        try:
            await self._lease(rid)
        except BaseException:
            await _cancel(reading)
            raise
        summary: RolloutSummary | None = None
        try:
            summary = await self._run_waves(rec, tally, budget, await reading)
            return summary
        finally:
            await self._end_leases(summary)

    async def _lease(self, rid: str) -> None:
        if self._leases is None:
            return
        try:
            await self._leases.acquire(list(self._hosts.values()))
        except CutoverError as exc:
            self._store.set_status(rid, RolloutStatus.HALTED, f"not started: {exc}")
            raise

    async def _end_leases(self, summary: RolloutSummary | None) -> None:
        """A paused rollout keeps its leases (for ``pause_lease_s``); any other ending releases."""
        if self._leases is None:
            return
        if summary is not None and summary.status == RolloutStatus.PAUSED:
            await self._leases.hold(self._pause_lease_s)
        else:
            await self._leases.release()

    async def _run_waves(
        self,
        rec: RolloutRecord,
        tally: Tally,
        budget: int,
        views: dict[str, AppView | CutoverError],
    ) -> RolloutSummary:
        prefetch: list[_Prefetch] = []
        try:
            return await self._waves_in_order(rec, tally, budget, views, prefetch)
        finally:
            for ahead in prefetch:
                await _cancel(ahead.task)

    async def _freeze_before(
        self,
        rec: RolloutRecord,
        i: int,
        wave: list[str],
        views: dict[str, AppView | CutoverError],
        prefetch: list[_Prefetch],
    ) -> dict[str, Any]:
        """The wave's freeze state: the staged check's answers for the first wave of this run,
        the read made while the previous wave ran if that wave took at most FREEZE_FRESH_S,
        else a read now."""
        ahead = prefetch.pop() if prefetch else None
        if i == rec.wave:
            return await self._waves.freeze_ahead(rec, wave, views)
        if ahead is not None and time.monotonic() - ahead.started <= FREEZE_FRESH_S:
            return await ahead.task
        if ahead is not None:
            await _cancel(ahead.task)
        return await self._waves.freeze_ahead(rec, wave)

    async def _waves_in_order(
        self,
        rec: RolloutRecord,
        tally: Tally,
        budget: int,
        views: dict[str, AppView | CutoverError],
        prefetch: list[_Prefetch],
    ) -> RolloutSummary:
        p, rid = rec.params, rec.id
        missing = self._check_staged(rec, views, tally)
        if missing:
            reason = (
                f"{len(missing)} host(s) do not hold {rec.app} {rec.version} staged: "
                f"{', '.join(missing)}; run `cutover push` first (a rollout never stages)"
            )
            return self._finish(rec, tally, RolloutStatus.HALTED, reason, not_staged=missing)
        # on resume the agents are the truth: failures recorded before count against the budget
        for host, state in rec.hosts.items():
            if state in ("failed", "isolated"):
                tally.failed.setdefault(host, HostFailure(host=host, decision=state, check=""))
        for i in range(rec.wave, len(rec.waves)):
            if i == 1 and p.pause_after_canary and not rec.promoted:
                reason = (
                    f"paused after the canary: `cutover promote {rid}` or `cutover abort {rid}`"
                )
                return self._pause(rec, tally, i, reason)
            wave = [h for h in rec.waves[i] if h not in tally.failed]  # activation is idempotent
            frozen = await self._freeze_before(rec, i, wave, views, prefetch)
            if frozen:
                return self._pause(rec, tally, i, self._freeze_reason(rec, i, frozen), frozen)
            self.emit(
                {
                    "event": "wave.start",
                    "rollout": rid,
                    "wave": i,
                    "canary": i == 0,
                    "hosts": wave,
                    "deadline": {
                        "healthy_deadline_s": p.healthy_deadline_s,
                        "progress_deadline_s": p.progress_deadline_s,
                        "action": "mark the host failed, then apply the failure budget",
                    },
                    "counts": tally.counts(),
                }
            )
            if i + 1 < len(rec.waves):  # read the next wave's freeze state while this one runs
                ahead = [h for h in rec.waves[i + 1] if h not in tally.failed]
                task = asyncio.ensure_future(self._waves.freeze_ahead(rec, ahead))
                prefetch.append(_Prefetch(time.monotonic(), task))
            out = await self._waves.run(rec, wave, tally)
            decision = decide(
                wave=i,
                new_failures=len(out.failures),
                total_failures=len(tally.failed),
                budget=budget,
                auto_revert=p.auto_revert,
                inconclusive=bool(out.inconclusive),
                frozen=bool(out.frozen),
            )
            for f in out.failures:
                self.emit({"event": "host.failed", "rollout": rid, **f.model_dump(mode="json")})
            if decision in (Decision.REVERT_ALL, Decision.HALT):
                why = (
                    f"the canary failed on {', '.join(f.host for f in out.failures)}"
                    if i == 0
                    else f"{len(tally.failed)} host(s) failed, past the budget of {budget}"
                )
                return await self._stop(rec, tally, decision, why)
            if out.failures:  # within the budget (go on, or pause after isolating them)
                await self._revert.isolate(rec, out.failures)
            if decision == Decision.PAUSE:  # the wave is retried on resume
                return self._pause_in_wave(rec, tally, i, out)
            self._store.set_status(rid, RolloutStatus.RUNNING, wave=i + 1)
            self.emit(
                {
                    "event": "wave.done",
                    "rollout": rid,
                    "wave": i,
                    "canary": i == 0,
                    "decision": decision.value,
                    "counts": tally.counts(),
                }
            )
        status = RolloutStatus.PARTIAL if tally.failed else RolloutStatus.ROLLED_OUT
        reason = (
            f"{len(tally.failed)} host(s) isolated (within the budget of {budget})"
            if tally.failed
            else f"{len(tally.healthy)} host(s) run {rec.version}"
        )
        return self._finish(rec, tally, status, reason)

    def _check_staged(
        self, rec: RolloutRecord, views: dict[str, AppView | CutoverError], tally: Tally
    ) -> list[str]:
        missing = []
        for host in self._hosts:
            view = views.get(host)
            if isinstance(view, AppView) and (
                rec.version in view.staged
                or view.current == rec.version
                or any(  # reverted after an inconclusive result: retryable, still on disk
                    r.version == rec.version and r.installed and r.status in _RETRYABLE
                    for r in view.releases
                )
            ):
                tally.staged += 1
                if view.current == rec.version and rec.hosts.get(host) == "active":
                    tally.activated.add(host)
                    tally.healthy.add(host)
            elif rec.hosts.get(host) not in ("failed", "isolated"):
                why = f"{view.code}: {view}" if isinstance(view, CutoverError) else "not staged"
                missing.append(f"{host} ({why})")
        return missing

    # ------------------------------------------------------------------ pauses
    @staticmethod
    def _freeze_reason(rec: RolloutRecord, wave: int, frozen: dict[str, Any]) -> str:
        first = min(frozen.values(), key=lambda w: str(w.get("ends_at", "")))
        return (
            f"freeze window {first.get('name')!r} is in force on {', '.join(sorted(frozen))} "
            f"until {first.get('ends_at')}: wave {wave} not started (nothing changed there); "
            f"once it ends, `cutover rollout --resume {rec.id}` continues "
            f"(`cutover abort {rec.id}` reverts)"
        )

    def _pause_in_wave(
        self, rec: RolloutRecord, tally: Tally, wave: int, out: WaveOutcome
    ) -> RolloutSummary:
        """A wave met a freeze refusal or an inconclusive result: pause, retry it on resume."""
        parts = []
        if out.frozen:
            host, why = sorted(out.frozen.items())[0]
            parts.append(
                f"{', '.join(sorted(out.frozen))} refused the activation (frozen): {host}: {why}"
            )
        for f in out.inconclusive:
            parts.append(
                f"{f.host}: live health inconclusive ({f.check}: {f.check_output}); "
                "its agent reverted it"
            )
        reason = (
            f"paused in wave {wave}, nothing counted against the budget: {'; '.join(parts)}; "
            f"fix the cause, then `cutover rollout --resume {rec.id}` retries the wave "
            f"(`cutover abort {rec.id}` reverts)"
        )
        detail = {f.host: f.model_dump(mode="json") for f in out.inconclusive}
        return self._pause(rec, tally, wave, reason, inconclusive=detail)

    def _pause(
        self,
        rec: RolloutRecord,
        tally: Tally,
        wave: int,
        reason: str,
        frozen: dict[str, Any] | None = None,
        *,
        inconclusive: dict[str, Any] | None = None,
    ) -> RolloutSummary:
        self._store.set_status(rec.id, RolloutStatus.PAUSED, reason, wave=wave)
        event: dict[str, Any] = {
            "event": "rollout.paused",
            "rollout": rec.id,
            "wave": wave,
            "reason": reason,
        }
        if frozen:
            event["frozen"] = frozen
        if inconclusive:
            event["inconclusive"] = inconclusive
        self.emit(event)
        return self._summary(rec, tally, RolloutStatus.PAUSED, reason)

    # ------------------------------------------------------------------ reverts
    async def _stop(
        self, rec: RolloutRecord, tally: Tally, decision: Decision, why: str
    ) -> RolloutSummary:
        touched = [
            h for h in tally.activated if h not in tally.failed or needs_revert(tally.failed[h])
        ]
        touched += [h for h, f in tally.failed.items() if h not in touched and needs_revert(f)]
        for f in tally.failed.values():
            f.decision = "reverted by its agent" if f.code == "reverted" else f.decision or "failed"
        if decision == Decision.HALT:
            reason = f"{why}; --no-auto-revert: {len(touched)} host(s) left on {rec.version}"
            return self._finish(rec, tally, RolloutStatus.HALTED, reason)
        self.emit(
            {"event": "rollout.reverting", "rollout": rec.id, "reason": why, "hosts": touched}
        )
        reverted = await self._revert.revert_all(rec, touched)
        for host, ok in reverted.items():
            if host in tally.failed:
                tally.failed[host].decision = "reverted" if ok else "revert failed"
        tally.healthy.clear()
        failed_reverts = [h for h, ok in reverted.items() if not ok]
        by_agent = sorted(h for h, f in tally.failed.items() if f.code == "reverted")
        reason = f"{why}; reverted {len(reverted) - len(failed_reverts)} host(s)"
        if by_agent:
            reason += f" ({', '.join(by_agent)} already reverted by its agent)"
        if failed_reverts:
            reason += f"; could not revert {', '.join(failed_reverts)} (see `cutover status`)"
        return self._finish(rec, tally, RolloutStatus.REVERTED, reason, reverted=reverted)

    async def abort(self, rid: str) -> RolloutSummary:
        """Revert every host the rollout touched (``cutover abort``); its leases are released."""
        rec = self._store.get(rid)
        tally = Tally(desired=sum(len(w) for w in rec.waves))
        await self._lease(rid)
        try:
            touched = [h for h, s in rec.hosts.items() if s not in ("pending",)]
            self.emit(
                {
                    "event": "rollout.reverting",
                    "rollout": rid,
                    "reason": "aborted",
                    "hosts": touched,
                }
            )
            reverted = await self._revert.revert_all(rec, touched)
            return self._finish(
                rec,
                tally,
                RolloutStatus.ABORTED,
                f"aborted: reverted {sum(reverted.values())} host(s)",
                reverted=reverted,
            )
        finally:
            if self._leases is not None:
                await self._leases.release()

    # ------------------------------------------------------------------ endings
    def _finish(
        self,
        rec: RolloutRecord,
        tally: Tally,
        status: RolloutStatus,
        reason: str,
        *,
        reverted: dict[str, bool] | None = None,
        not_staged: list[str] | None = None,
    ) -> RolloutSummary:
        self._store.set_status(rec.id, status, reason)
        return self._summary(rec, tally, status, reason, reverted, not_staged)

    def _summary(
        self,
        rec: RolloutRecord,
        tally: Tally,
        status: RolloutStatus,
        reason: str,
        reverted: dict[str, bool] | None = None,
        not_staged: list[str] | None = None,
    ) -> RolloutSummary:
        return RolloutSummary(
            rollout=rec.id,
            app=rec.app,
            version=rec.version,
            status=status,
            reason=reason,
            counts=tally.counts(),
            failures=list(tally.failed.values()),
            reverted=sorted(h for h, ok in (reverted or {}).items() if ok),
            hosts=self._store.get(rec.id).hosts,
            not_staged=not_staged or [],
        )
