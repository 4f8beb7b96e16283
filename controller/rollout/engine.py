"""The rollout engine: canary, then waves, each gated by health and a bake, under deadlines.

Order of a rollout (docs/rollouts.md has the timeline):

1. **leases**: every host of the selection is leased for this rollout (``cutover.controller.
   rollout.leases``); one refusal stops the rollout before anything changes (409 names the holder);
2. **staged check**: every host must hold the release staged (or already run it): preparing is
   separate from activating (``push`` / ``deploy --rollout`` stage first);
3. **waves**: wave 0 is the canary; each wave's hosts are activated in parallel (bounded by
   ``max_parallel``), each under two deadlines: ``healthy_deadline_s`` for the whole activation
   and ``progress_deadline_s`` for an agent that stops answering (a heartbeat reads the app every
   second; silence that long marks the host failed: *unresponsive*); then the wave **bakes**
   (``bake_s``): each host must keep answering, keep running the version and keep its live health;
4. **decision** after each wave (pure, :func:`decide`): a canary failure, or more failures than the
   budget, reverts every host the rollout touched, all at once (no canary, no bake replayed); a
   failure within the budget isolates that host (its agent reverted it, or the engine rolls it
   back) and the rollout goes on; an *inconclusive* health result pauses the rollout;
5. ``--pause-after-canary`` pauses after wave 0; ``cutover promote ID`` resumes, ``abort`` reverts.

Every wait has a deadline and every deadline an action, printed in the ``wave.start`` event and the
live table. Progress goes to the ``sink`` as events (the NDJSON stream of ``--json``), the state
to the :class:`RolloutStore` (so ``--resume`` continues after the CLI died).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cutover.agent.errors import CutoverError, OperationalError, UnreachableError
from cutover.controller.fleet.agents import AgentPort, AppView, JournalEntry, OpRecord
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.results import HostStatus, classify, host_exit_code
from cutover.controller.fleet.runner import Done, EventSink, FleetRunner, now_iso
from cutover.controller.rollout.leases import LeaseKeeper
from cutover.controller.rollout.plan import failure_budget
from cutover.controller.rollout.report import Evidence, HostFailure, RolloutSummary, failure_from
from cutover.controller.rollout.store import RolloutRecord, RolloutStatus, RolloutStore

__all__ = ["Decision", "RolloutEngine", "decide"]

HEARTBEAT_S = 1.0


class Decision(StrEnum):
    GO_ON = "go_on"  # next wave
    ISOLATE = "isolate"  # failures within the budget: revert those hosts, go on
    REVERT_ALL = "revert_all"  # canary failed or budget exceeded
    HALT = "halt"  # the same, with --no-auto-revert: stop and leave hosts as they are
    PAUSE = "pause"  # inconclusive health: an operator decides


def decide(
    *, wave: int, new_failures: int, total_failures: int, budget: int, auto_revert: bool,
    inconclusive: bool,
) -> Decision:  # fmt: skip
    """What to do after a wave (pure)."""
    if new_failures and (wave == 0 or total_failures > budget):
        return Decision.REVERT_ALL if auto_revert else Decision.HALT
    if inconclusive:
        return Decision.PAUSE
    return Decision.ISOLATE if new_failures else Decision.GO_ON


@dataclass
class _Tally:
    desired: int = 0
    staged: int = 0
    activated: set[str] = field(default_factory=set)
    healthy: set[str] = field(default_factory=set)
    failed: dict[str, HostFailure] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {
            "desired": self.desired,
            "staged": self.staged,
            "activated": len(self.activated),
            "healthy": len(self.healthy),
            "failed": len(self.failed),
        }


class RolloutEngine:
    """Runs (or resumes) one rollout recorded in ``store``.

    Args:
        hosts: the rollout's hosts (every host of its waves).
        connect: host -> agent port (the CLI's signed client; tests may inject theirs).
        store: the local state.
        sink: receives every event (``ts`` is added).
        leases: holds the agents' leases for the rollout (None: no leases, e.g. a unit test).
    """

    name = "rollout"

    def __init__(
        self,
        hosts: list[HostSpec],
        connect: Callable[[HostSpec], AgentPort],
        store: RolloutStore,
        sink: EventSink,
        leases: LeaseKeeper | None = None,
    ) -> None:
        self._hosts = {h.name: h for h in hosts}
        self._connect = connect
        self._store = store
        self._sink = sink
        self._leases = leases
        self._evidence: dict[str, Evidence] = {}  # host -> what its agent streamed

    def emit(self, event: dict[str, Any]) -> None:
        self._sink({"ts": now_iso(), **event})

    # ------------------------------------------------------------------ the whole rollout
    async def run(self, rid: str, *, promote: bool = False) -> RolloutSummary:
        """Run rollout ``rid`` from its next wave; ``promote``: go past a pause after the canary."""
        rec = self._store.get(rid)
        p = rec.params
        tally = _Tally(desired=sum(len(w) for w in rec.waves))
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
        if self._leases is not None:
            try:
                await self._leases.acquire(list(self._hosts.values()))
            except CutoverError as exc:
                self._store.set_status(rid, RolloutStatus.HALTED, f"not started: {exc}")
                raise
        try:
            return await self._waves(rec, tally, budget, promote)
        finally:
            if self._leases is not None:
                await self._leases.release()

    async def _waves(
        self, rec: RolloutRecord, tally: _Tally, budget: int, promote: bool
    ) -> RolloutSummary:
        p, rid = rec.params, rec.id
        views = await self._read_all(rec.app, list(self._hosts))
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
            if i == 1 and p.pause_after_canary and not promote:
                reason = (
                    f"paused after the canary: `cutover promote {rid}` or `cutover abort {rid}`"
                )
                return self._pause(rec, tally, i, reason)
            wave = [h for h in rec.waves[i] if h not in tally.failed]
            todo = wave  # activation is idempotent: a host already on it answers unchanged
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
            failures, inconclusive = await self._wave(rec, wave, todo, tally)
            decision = decide(
                wave=i,
                new_failures=len(failures),
                total_failures=len(tally.failed),
                budget=budget,
                auto_revert=p.auto_revert,
                inconclusive=inconclusive,
            )
            for f in failures:
                self.emit({"event": "host.failed", "rollout": rid, **f.model_dump(mode="json")})
            if decision in (Decision.REVERT_ALL, Decision.HALT):
                why = (
                    f"the canary failed on {', '.join(f.host for f in failures)}"
                    if i == 0
                    else f"{len(tally.failed)} host(s) failed, past the budget of {budget}"
                )
                return await self._stop(rec, tally, decision, why)
            if decision == Decision.ISOLATE:
                await self._isolate(rec, failures, tally)
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
            if decision == Decision.PAUSE:
                return self._pause(
                    rec, tally, i + 1, f"inconclusive health on wave {i}: an operator decides"
                )
        status = RolloutStatus.PARTIAL if tally.failed else RolloutStatus.ROLLED_OUT
        reason = (
            f"{len(tally.failed)} host(s) isolated (within the budget of {budget})"
            if tally.failed
            else f"{len(tally.healthy)} host(s) run {rec.version}"
        )
        return self._finish(rec, tally, status, reason)

    def _check_staged(
        self, rec: RolloutRecord, views: dict[str, AppView | CutoverError], tally: _Tally
    ) -> list[str]:
        missing = []
        for host in self._hosts:
            view = views.get(host)
            if isinstance(view, AppView) and (
                rec.version in view.staged or view.current == rec.version
            ):
                tally.staged += 1
                if view.current == rec.version and rec.hosts.get(host) == "active":
                    tally.activated.add(host)
                    tally.healthy.add(host)
            elif rec.hosts.get(host) not in ("failed", "isolated"):
                why = f"{view.code}: {view}" if isinstance(view, CutoverError) else "not staged"
                missing.append(f"{host} ({why})")
        return missing

    # ------------------------------------------------------------------ one wave
    async def _wave(
        self, rec: RolloutRecord, wave: list[str], todo: list[str], tally: _Tally
    ) -> tuple[list[HostFailure], bool]:
        p = rec.params
        runner = FleetRunner(
            [self._hosts[h] for h in todo],
            self._connect,
            max_parallel=p.max_parallel,
            sink=self._sink,
        )
        for h in todo:
            self._store.set_host(rec.id, h, "activating")
        result = await runner.run("activate", rec.app, rec.version, self._activate_work(rec))
        failures: list[HostFailure] = []
        inconclusive = False
        for res in result.hosts:
            if res.status.succeeded:
                tally.activated.add(res.host)
                self._store.set_host(rec.id, res.host, "active")
                continue
            inconclusive = inconclusive or "inconclusive" in res.message
            failure = await self._explain(rec, res.host, res.error or "failed", res.message)
            failures.append(failure)
        good = [h for h in wave if h not in {f.host for f in failures}]
        if p.bake_s > 0 and good:
            self.emit({"event": "wave.bake", "rollout": rec.id, "hosts": good, "bake_s": p.bake_s})
            baked = await asyncio.gather(*(self._bake(rec, h) for h in good))
            for host, problem in zip(good, baked, strict=True):
                if problem is not None:
                    failures.append(await self._explain(rec, host, problem[0], problem[1]))
        for f in failures:
            tally.failed[f.host] = f
            tally.healthy.discard(f.host)
            self._store.set_host(rec.id, f.host, "failed", f.message)
        tally.healthy.update(h for h in good if h not in tally.failed)
        return failures, inconclusive

    def _activate_work(
        self, rec: RolloutRecord
    ) -> Callable[[AgentPort, Callable[[dict[str, Any]], None]], Any]:
        p = rec.params
        lease_for = self._leases.lease_id if self._leases is not None else (lambda _h: None)
        first_canary = rec.waves[0][0]  # runs the checkpoint and the ``once`` hooks, alone

        async def work(port: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
            name = getattr(port, "name", "")
            seen = self._evidence.setdefault(name, Evidence())

            def watch_events(event: dict[str, Any]) -> None:
                seen.note(event)
                on_event(event)

            act = asyncio.create_task(
                port.activate(
                    rec.app, rec.version, watch_events, lease_for(name), name == first_canary
                )
            )
            watch = asyncio.create_task(self._heartbeat(port, rec.app, p.progress_deadline_s))
            try:
                done, _ = await asyncio.wait(
                    {act, watch}, timeout=p.healthy_deadline_s, return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                watch.cancel()
            if act in done:
                return _done(act.result())
            act.cancel()
            if watch in done:
                raise UnreachableError(
                    f"{name}: the agent did not answer for {p.progress_deadline_s:g}s "
                    "(progress deadline): host marked failed",
                    code="unresponsive",
                )
            raise OperationalError(
                f"{name}: not healthy within {p.healthy_deadline_s:g}s (healthy deadline): "
                "host marked failed",
                code="healthy_deadline",
            )

        return work

    @staticmethod
    async def _heartbeat(port: AgentPort, app: str, deadline_s: float) -> None:
        """Returns when the agent has not answered for ``deadline_s`` (never otherwise)."""
        last_ok = time.monotonic()
        while True:
            try:
                await asyncio.wait_for(port.app(app), timeout=deadline_s)
                last_ok = time.monotonic()
            except (CutoverError, TimeoutError):
                if time.monotonic() - last_ok >= deadline_s:
                    return
            await asyncio.sleep(min(HEARTBEAT_S, deadline_s / 3))

    async def _bake(self, rec: RolloutRecord, host: str) -> tuple[str, str] | None:
        """Watch ``host`` for ``bake_s``: None if it stayed healthy, else (check, why)."""
        p = rec.params
        port = self._connect(self._hosts[host])
        try:
            end = time.monotonic() + p.bake_s
            last_ok = time.monotonic()
            while True:
                try:
                    view = await asyncio.wait_for(port.app(rec.app), timeout=p.progress_deadline_s)
                    last_ok = time.monotonic()
                    if view.current != rec.version:
                        return ("bake", f"no longer runs {rec.version} (current {view.current})")
                    health = view.last_health() or ""
                    if health.endswith("fail"):
                        return ("bake", f"health during the bake: {health}")
                except (CutoverError, TimeoutError) as exc:
                    if time.monotonic() - last_ok >= p.progress_deadline_s:
                        return (
                            "unresponsive",
                            f"{host}: the agent did not answer for {p.progress_deadline_s:g}s "
                            f"during the bake ({exc or 'timeout'})",
                        )
                left = end - time.monotonic()
                if left <= 0:
                    return None
                await asyncio.sleep(min(HEARTBEAT_S, left))
        finally:
            await port.close()

    async def _explain(self, rec: RolloutRecord, host: str, code: str, message: str) -> HostFailure:
        """The failure report of one host: its error plus the agent's journal tail (if it answers)."""
        port = self._connect(self._hosts[host])
        wait = rec.params.progress_deadline_s
        entries: list[JournalEntry] | None = None
        view: AppView | None = None
        try:
            entries = await asyncio.wait_for(port.journal(rec.app, 30), timeout=wait)
            view = await asyncio.wait_for(port.app(rec.app), timeout=wait)
        except (CutoverError, TimeoutError):
            pass  # what could be fetched is reported; the rest says the agent did not answer
        finally:
            await port.close()
        return failure_from(
            host, rec.version, code, message, entries, view, self._evidence.get(host)
        )

    # ------------------------------------------------------------------ decisions
    async def _isolate(
        self, rec: RolloutRecord, failures: list[HostFailure], tally: _Tally
    ) -> None:
        """Failures within the budget: roll back those the agent did not revert itself."""
        targets = [
            f.host for f in failures if f.code not in ("reverted", "unresponsive", "unreachable")
        ]
        reverted = await self._rollback(rec, targets) if targets else {}
        for f in failures:
            ok = f.code == "reverted" or reverted.get(f.host, False)
            f.decision = (
                "isolated (reverted)" if ok else "isolated (not reverted: agent unreachable)"
            )
            self._store.set_host(rec.id, f.host, "isolated", f.message)

    async def _stop(
        self, rec: RolloutRecord, tally: _Tally, decision: Decision, why: str
    ) -> RolloutSummary:
        touched = [
            h
            for h in tally.activated
            if h not in tally.failed or self._needs_revert(tally.failed[h])
        ]
        touched += [
            h for h, f in tally.failed.items() if h not in touched and self._needs_revert(f)
        ]
        for f in tally.failed.values():
            f.decision = "reverted by its agent" if f.code == "reverted" else f.decision or "failed"
        if decision == Decision.HALT:
            reason = f"{why}; --no-auto-revert: {len(touched)} host(s) left on {rec.version}"
            return self._finish(rec, tally, RolloutStatus.HALTED, reason)
        self.emit(
            {"event": "rollout.reverting", "rollout": rec.id, "reason": why, "hosts": touched}
        )
        reverted = await self._rollback(rec, touched, parallel=True)
        for host, ok in reverted.items():
            self._store.set_host(rec.id, host, "reverted" if ok else "revert_failed")
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

    @staticmethod
    def _needs_revert(f: HostFailure) -> bool:
        return f.code != "reverted"

    async def _rollback(
        self, rec: RolloutRecord, hosts: list[str], *, parallel: bool = False
    ) -> dict[str, bool]:
        """Roll ``hosts`` back to their previous release; host -> it worked."""
        if not hosts:
            return {}
        specs = [self._hosts[h] for h in hosts]
        runner = FleetRunner(
            specs,
            self._connect,
            max_parallel=len(specs) if parallel else rec.params.max_parallel,
            sink=self._sink,
        )
        lease_for = self._leases.lease_id if self._leases is not None else (lambda _h: None)

        async def work(port: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
            try:
                view = await asyncio.wait_for(port.app(rec.app), rec.params.progress_deadline_s)
            except TimeoutError as exc:
                raise UnreachableError(
                    f"{getattr(port, 'name', '')}: no answer within the progress deadline "
                    f"({rec.params.progress_deadline_s:g}s): not reverted",
                    code="unresponsive",
                ) from exc
            if view.current != rec.version:  # not (or no longer) on this release: nothing to undo
                return Done(status=HostStatus.UNCHANGED, message=f"runs {view.current}")
            name = getattr(port, "name", "")
            return _done(await port.rollback(rec.app, None, on_event, lease_for(name)))

        result = await runner.run("revert", rec.app, rec.version, work)
        return {h.host: h.status.succeeded for h in result.hosts}

    async def abort(self, rid: str) -> RolloutSummary:
        """Revert every host the rollout touched (``cutover abort``)."""
        rec = self._store.get(rid)
        tally = _Tally(desired=sum(len(w) for w in rec.waves))
        if self._leases is not None:
            await self._leases.acquire(list(self._hosts.values()))
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
            reverted = await self._rollback(rec, touched, parallel=True)
            for host, ok in reverted.items():
                self._store.set_host(rid, host, "reverted" if ok else "revert_failed")
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
    def _pause(self, rec: RolloutRecord, tally: _Tally, wave: int, reason: str) -> RolloutSummary:
        self._store.set_status(rec.id, RolloutStatus.PAUSED, reason, wave=wave)
        self.emit({"event": "rollout.paused", "rollout": rec.id, "wave": wave, "reason": reason})
        return self._summary(rec, tally, RolloutStatus.PAUSED, reason)

    def _finish(
        self,
        rec: RolloutRecord,
        tally: _Tally,
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
        tally: _Tally,
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

    async def _read_all(self, app: str, hosts: list[str]) -> dict[str, AppView | CutoverError]:
        async def one(h: str) -> AppView | CutoverError:
            port = self._connect(self._hosts[h])
            try:
                return await port.app(app)
            except CutoverError as exc:
                return exc
            finally:
                await port.close()

        answers = await asyncio.gather(*(one(h) for h in hosts))
        return dict(zip(hosts, answers, strict=True))


def _done(record: OpRecord) -> Done:
    result = record.result or {}
    failure = record.failure()
    if failure is not None:
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
        status=HostStatus.UNCHANGED if result.get("already_active") else HostStatus.OK,
        message=str(result.get("message", "")),
        operation=record.id,
        version=result.get("version"),
        current=result.get("current"),
        previous=result.get("previous"),
    )
