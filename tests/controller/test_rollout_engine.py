"""The rollout engine against fake *remote* agents (allowed in a unit test): how it sorts an
activation that a freeze window refused, or whose live checks were inconclusive, from a failure.

The real agents are exercised end to end in tests/e2e/test_rollout.py (an inconclusive canary,
a freeze met between waves); these cases cover what a real fleet cannot produce on demand: a
window that starts between the engine's freeze check and the activation itself.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from cutover.controller.fleet.agents import AppView, JournalEntry, LeaseView, OpRecord
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.rollout import (
    Amount,
    RolloutEngine,
    RolloutParams,
    RolloutStatus,
    RolloutStore,
    plan_waves,
)

APP, OLD, NEW = "ame", "1.0.0", "1.1.0"


class FakeAgent:
    """A remote agent: ``refuse`` is the error body its activation fails with (None: succeeds)."""

    def __init__(self, name: str, refuse: dict[str, Any] | None, calls: list[str]) -> None:
        self.name = name
        self.refuse = refuse
        self.calls = calls
        self.current = OLD

    async def app(self, app: str) -> AppView:
        return AppView(app=app, current=self.current, staged=[NEW] if self.current != NEW else [])

    async def journal(self, app: str, limit: int) -> list[JournalEntry]:
        return []

    async def activate(
        self, app: str, version: str, on_event: Any, lease: str | None = None, run_once: bool = True
    ) -> OpRecord:
        self.calls.append(f"activate {self.name}")
        if self.refuse is not None:
            return OpRecord(id=f"op-{self.name}", op="activate", status="failed", error=self.refuse)
        self.current = version
        return OpRecord(id=f"op-{self.name}", op="activate", status="succeeded", result={})

    async def rollback(
        self, app: str, to: str | None, on_event: Any, lease: str | None = None
    ) -> OpRecord:
        self.calls.append(f"rollback {self.name}")
        self.current = OLD
        return OpRecord(id=f"op-{self.name}", op="rollback", status="succeeded", result={})

    async def lease(self, *args: Any, **kw: Any) -> LeaseView:  # pragma: no cover
        raise AssertionError("no leases in this test")

    async def release_lease(self, app: str, lease_id: str) -> bool:  # pragma: no cover
        raise AssertionError("no leases in this test")

    async def upload(self, *args: Any) -> OpRecord:  # pragma: no cover
        raise AssertionError("a rollout never stages")

    async def fetch(self, *args: Any) -> OpRecord:  # pragma: no cover
        raise AssertionError("a rollout never stages")

    async def close(self) -> None:
        pass


FROZEN = {
    "error": "frozen",
    "kind": "frozen",
    "message": "ame 1.1.0 (minor) cannot be activated: freeze window 'release-day' is in force",
}
INCONCLUSIVE = {
    "error": "reverted",
    "kind": "reverted",
    "message": "activation failed after the flip and was reverted: live checks: db: unreachable",
    "health": "inconclusive",
}
WORDY_FAILURE = {  # the word alone must not pause a rollout: the typed field says "fail"
    "error": "reverted",
    "kind": "reverted",
    "message": "reverted: the check printed 'inconclusive' and exited 1",
    "health": "fail",
}


async def _run(
    tmp_path: Path, behaviour: dict[str, dict[str, Any] | None], max_failures: int
) -> tuple[Any, list[str], dict[str, FakeAgent], RolloutStore]:
    names = list(behaviour)
    calls: list[str] = []
    agents = {n: FakeAgent(n, behaviour[n], calls) for n in names}
    hosts = [HostSpec(name=n, url=f"http://{n}.invalid:7801") for n in names]
    store = RolloutStore(tmp_path / "state")
    params = RolloutParams(
        canary=Amount(value=1), batch=Amount(value=2), max_failures=Amount(value=max_failures)
    )
    waves = plan_waves(names, params.canary, params.batch)
    rid = store.create(APP, NEW, "fleet.toml", "test@unit", params, waves)
    events: list[dict[str, Any]] = []
    engine = RolloutEngine(hosts, lambda h: agents[h.name], store, events.append)
    summary = await engine.run(rid)
    return summary, calls, agents, store


async def test_an_activation_refused_by_a_freeze_is_no_failure_and_pauses_the_wave(
    tmp_path: Path,
) -> None:
    summary, calls, agents, store = await _run(
        tmp_path, {"a": None, "b": None, "c": FROZEN}, max_failures=0
    )
    assert summary.status == RolloutStatus.PAUSED
    assert summary.failures == [] and summary.counts["failed"] == 0
    assert "release-day" in summary.reason and f"--resume {summary.rollout}" in summary.reason
    assert not [c for c in calls if c.startswith("rollback")]  # nothing reverted
    assert {n: a.current for n, a in agents.items()} == {"a": NEW, "b": NEW, "c": OLD}
    rec = store.get(summary.rollout)
    assert rec.wave == 1 and rec.hosts == {"a": "active", "b": "active", "c": "pending"}
    store.close()


@pytest.mark.parametrize(
    ("refusal", "status", "failed"),
    [
        pytest.param(INCONCLUSIVE, RolloutStatus.PAUSED, 0, id="typed-inconclusive-pauses"),
        pytest.param(WORDY_FAILURE, RolloutStatus.REVERTED, 1, id="the-word-alone-is-a-failure"),
    ],
)
async def test_only_the_typed_health_field_makes_a_reverted_canary_inconclusive(
    tmp_path: Path, refusal: dict[str, Any], status: RolloutStatus, failed: int
) -> None:
    summary, calls, agents, store = await _run(
        tmp_path, {"a": refusal, "b": None, "c": None}, max_failures=0
    )
    assert summary.status == status and summary.counts["failed"] == failed
    assert calls[0] == "activate a" and "activate b" not in calls  # the waves never started
    assert {n: a.current for n, a in agents.items()} == dict.fromkeys(agents, OLD)
    if status == RolloutStatus.PAUSED:
        assert store.get(summary.rollout).hosts["a"] == "inconclusive"
        assert "live health inconclusive" in summary.reason
    store.close()
