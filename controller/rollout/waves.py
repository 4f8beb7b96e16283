"""One wave of a rollout: activate its hosts under deadlines, bake them, explain failures.

:class:`WaveRunner` activates a wave's hosts in parallel (bounded by ``max_parallel``, each under
the deadlines of :mod:`.deadlines`), bakes the ones that came up, and sorts every host into one
of four outcomes (:class:`WaveOutcome`):

* **activated**: healthy through the bake;
* **failed**: its activation failed (the agent reverted it: ``reverted``), a deadline passed, or
  the bake saw it fail; each with its failure report (:func:`.report.failure_from`), fetched from
  the agent;
* **inconclusive**: the agent reverted it because its live checks could not be carried out
  (``ErrorBody.health == "inconclusive"``, a typed field, never a word in a message): not a
  failure, the rollout pauses;
* **frozen**: the agent refused the activation with ``frozen`` (a freeze window started): not a
  failure, nothing changed there, the rollout pauses.

:meth:`WaveRunner.freeze_ahead` asks the next wave's agents, before the wave starts, whether a
freeze window would refuse the version (``GET /v1/apps/{app}`` ``frozen``), so a freeze between
waves stops the rollout before any host of the wave is touched.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from cutover.agent.errors import ActivationFailedError, CutoverError
from cutover.controller.fleet.agents import AgentPort, AppView, JournalEntry
from cutover.controller.fleet.runner import Done, FleetRunner
from cutover.controller.fleet.steps import record_done
from cutover.controller.rollout.context import RolloutContext
from cutover.controller.rollout.deadlines import activate_within, bake
from cutover.controller.rollout.report import Evidence, HostFailure, failure_from
from cutover.controller.rollout.store import RolloutRecord

__all__ = ["Tally", "WaveOutcome", "WaveRunner"]


@dataclass
class Tally:
    """The live table's counts (Desired / Staged / Activated / Healthy / Failed)."""

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


@dataclass
class WaveOutcome:
    failures: list[HostFailure] = field(default_factory=list)
    inconclusive: list[HostFailure] = field(default_factory=list)  # reverted by their agent
    frozen: dict[str, str] = field(default_factory=dict)  # host -> the agent's refusal


class WaveRunner:
    """Runs the waves of one rollout (one instance per engine run)."""

    def __init__(self, ctx: RolloutContext) -> None:
        self._ctx = ctx
        self._evidence: dict[str, Evidence] = {}  # host -> what its agent streamed

    async def read_all(self, app: str, hosts: list[str]) -> dict[str, AppView | CutoverError]:
        """Every host's view of ``app`` (or the error asking it gave)."""

        async def one(h: str) -> AppView | CutoverError:
            port = self._ctx.port(h)
            try:
                return await port.app(app)
            except CutoverError as exc:
                return exc
            finally:
                await port.close()

        answers = await asyncio.gather(*(one(h) for h in hosts))
        return dict(zip(hosts, answers, strict=True))

    async def freeze_ahead(
        self,
        rec: RolloutRecord,
        hosts: list[str],
        views: dict[str, AppView | CutoverError] | None = None,
    ) -> dict[str, Any]:
        """host -> the freeze window that would refuse ``rec.version`` there now (empty: none).

        ``views``: answers just read (the staged check's, for the first wave), else read now.
        An agent that does not answer is not frozen: the wave's deadlines deal with it.
        """
        if views is None:
            views = await self.read_all(rec.app, hosts)
        return {
            h: v.frozen[rec.version]
            for h, v in views.items()
            if h in hosts and isinstance(v, AppView) and rec.version in v.frozen
        }

    # ------------------------------------------------------------------ one wave
    async def run(self, rec: RolloutRecord, wave: list[str], tally: Tally) -> WaveOutcome:
        """Activate ``wave``, bake it, and sort its hosts (the module docstring)."""
        p = rec.params
        out = WaveOutcome()
        inconclusive: set[str] = set()
        runner = FleetRunner(
            [self._ctx.hosts[h] for h in wave],
            self._ctx.connect,
            max_parallel=p.max_parallel,
            sink=self._ctx.sink,
        )
        self._ctx.store.set_hosts(rec.id, dict.fromkeys(wave, ("activating", "")))
        result = await runner.run(
            "activate", rec.app, rec.version, self._activate_work(rec, inconclusive)
        )
        states: dict[str, tuple[str, str]] = {}
        for res in result.hosts:
            if res.status.succeeded:
                tally.activated.add(res.host)
                states[res.host] = ("active", "")
            elif res.error == "frozen":
                out.frozen[res.host] = res.message
                states[res.host] = ("pending", res.message)
            else:
                failure = await self.explain(rec, res.host, res.error or "failed", res.message)
                if res.host in inconclusive:
                    out.inconclusive.append(failure)
                    states[res.host] = ("inconclusive", res.message)
                else:
                    out.failures.append(failure)
        self._ctx.store.set_hosts(rec.id, states)
        good = [h for h in wave if h in tally.activated and h not in {f.host for f in out.failures}]
        if p.bake_s > 0 and good:
            self._ctx.emit(
                {"event": "wave.bake", "rollout": rec.id, "hosts": good, "bake_s": p.bake_s}
            )
            baked = await asyncio.gather(
                *(
                    bake(
                        partial(self._ctx.port, h),
                        h,
                        rec.app,
                        rec.version,
                        bake_s=p.bake_s,
                        progress_deadline_s=p.progress_deadline_s,
                    )
                    for h in good
                )
            )
            for host, problem in zip(good, baked, strict=True):
                if problem is not None:
                    out.failures.append(await self.explain(rec, host, problem[0], problem[1]))
        for f in out.failures:
            tally.failed[f.host] = f
            tally.healthy.discard(f.host)
        self._ctx.store.set_hosts(rec.id, {f.host: ("failed", f.message) for f in out.failures})
        tally.healthy.update(h for h in good if h not in tally.failed)
        return out

    def _activate_work(
        self, rec: RolloutRecord, inconclusive: set[str]
    ) -> Callable[[AgentPort, Callable[[dict[str, Any]], None]], Any]:
        p = rec.params
        first_canary = rec.waves[0][0]  # runs the checkpoint and the ``once`` hooks, alone

        async def work(port: AgentPort, on_event: Callable[[dict[str, Any]], None]) -> Done:
            name = getattr(port, "name", "")
            seen = self._evidence.setdefault(name, Evidence())

            def watch_events(event: dict[str, Any]) -> None:
                seen.note(event)
                on_event(event)

            record = await activate_within(
                port,
                port.activate(
                    rec.app,
                    rec.version,
                    watch_events,
                    self._ctx.lease_for(name),
                    name == first_canary,
                ),
                rec.app,
                healthy_deadline_s=p.healthy_deadline_s,
                progress_deadline_s=p.progress_deadline_s,
            )
            failure = record.failure()
            if isinstance(failure, ActivationFailedError) and failure.health == "inconclusive":
                inconclusive.add(name)
            return record_done(record, "already_active")

        return work

    async def explain(self, rec: RolloutRecord, host: str, code: str, message: str) -> HostFailure:
        """The failure report of one host: its error plus the agent's journal tail (if it answers)."""
        port = self._ctx.port(host)
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
