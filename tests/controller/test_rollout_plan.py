"""The rollout's pure parts: amounts, waves, the failure budget, the decision table, exit codes;
and the SQLite state store on a real file."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cutover.agent.errors import ConfigError, NotFoundError
from cutover.controller.rollout import (
    Amount,
    Decision,
    RolloutParams,
    RolloutStatus,
    RolloutStore,
    decide,
    failure_budget,
    parse_amount,
    plan_waves,
    rollout_exit_code,
)
from cutover.controller.rollout.store import _SCHEMA

HOSTS = [f"h{i}" for i in range(1, 11)]


@pytest.mark.parametrize(
    ("canary", "batch", "waves"),
    [
        ("1", "25%", [["h1"], ["h2", "h3", "h4"], ["h5", "h6", "h7"], ["h8", "h9", "h10"]]),
        ("10%", "5", [["h1"], ["h2", "h3", "h4", "h5", "h6"], ["h7", "h8", "h9", "h10"]]),
        ("15%", "100%", [["h1", "h2"], HOSTS[2:]]),
        ("20", "1", [HOSTS]),
    ],
    ids=["count-canary-percent-batch", "percent-canary", "percent-rounds-up", "canary-is-all"],
)
def test_waves(canary: str, batch: str, waves: list[list[str]]) -> None:
    got = plan_waves(HOSTS, parse_amount("--canary", canary), parse_amount("--batch", batch))
    assert got == waves
    assert [h for w in got for h in w] == HOSTS  # every host exactly once, in file order


@pytest.mark.parametrize(
    ("text", "hosts", "budget"),
    [("0", 10, 0), ("2", 10, 2), ("10%", 10, 1), ("10%", 5, 0), ("50%", 5, 2)],
    ids=["none", "count", "percent", "percent-rounds-down", "half-of-five"],
)
def test_failure_budget(text: str, hosts: int, budget: int) -> None:
    amount = parse_amount("--max-failures", text, allow_zero=True)
    assert failure_budget(amount, hosts) == budget


@pytest.mark.parametrize(
    ("text", "allow_zero"),
    [("0", False), ("101%", False), ("-1", False), ("two", False), ("1.5", True)],
    ids=["zero-hosts", "over-100-percent", "negative", "word", "fraction"],
)
def test_bad_amounts_are_usage_errors(text: str, allow_zero: bool) -> None:
    with pytest.raises(ConfigError) as err:
        parse_amount("--canary", text, allow_zero=allow_zero)
    assert "--canary" in str(err.value) and err.value.exit_code == 2


@pytest.mark.parametrize(
    ("wave", "new", "total", "budget", "auto", "inconclusive", "frozen", "decision"),
    [
        (0, 0, 0, 0, True, False, False, Decision.GO_ON),
        (0, 1, 1, 5, True, False, False, Decision.REVERT_ALL),
        (0, 1, 1, 5, False, False, False, Decision.HALT),
        (1, 1, 1, 1, True, False, False, Decision.ISOLATE),
        (2, 1, 2, 1, True, False, False, Decision.REVERT_ALL),
        (1, 0, 0, 0, True, True, False, Decision.PAUSE),
        (0, 0, 0, 0, True, True, False, Decision.PAUSE),
        (1, 1, 3, 1, True, True, False, Decision.REVERT_ALL),
        (1, 0, 0, 0, True, False, True, Decision.PAUSE),
        (0, 0, 0, 0, True, False, True, Decision.PAUSE),
        (1, 1, 1, 1, True, False, True, Decision.PAUSE),
        (2, 1, 2, 1, True, False, True, Decision.REVERT_ALL),
    ],
    ids=[
        "healthy", "canary-fails-reverts-whatever-the-budget", "canary-fails-no-auto-revert",
        "within-budget-isolates", "past-budget-reverts-all", "inconclusive-pauses",
        "inconclusive-canary-pauses", "past-budget-beats-inconclusive", "frozen-pauses",
        "frozen-canary-pauses", "frozen-with-failures-within-budget-pauses",
        "past-budget-beats-frozen",
    ],
)  # fmt: skip
def test_decision_table(
    wave: int,
    new: int,
    total: int,
    budget: int,
    auto: bool,
    inconclusive: bool,
    frozen: bool,
    decision: Decision,
) -> None:
    got = decide(
        wave=wave,
        new_failures=new,
        total_failures=total,
        budget=budget,
        auto_revert=auto,
        inconclusive=inconclusive,
        frozen=frozen,
    )
    assert got == decision


def test_every_status_has_its_own_exit_code_meaning() -> None:
    codes = {s: rollout_exit_code(s) for s in RolloutStatus if s != RolloutStatus.RUNNING}
    assert codes == {
        RolloutStatus.ROLLED_OUT: 0,
        RolloutStatus.PARTIAL: 8,
        RolloutStatus.REVERTED: 7,
        RolloutStatus.HALTED: 1,
        RolloutStatus.PAUSED: 10,
        RolloutStatus.ABORTED: 7,
    }


def test_store_keeps_the_plan_and_host_states_across_connections(tmp_path: Path) -> None:
    params = RolloutParams(canary=Amount(value=1), batch=Amount(value=2), bake_s=5)
    store = RolloutStore(tmp_path / "state")
    rid = store.create("ame", "1.2.0", "fleet.toml", "ci@runner", params, [["a"], ["b", "c"]])
    store.set_host(rid, "a", "active")
    store.set_hosts(rid, {"b": ("activating", ""), "c": ("failed", "health")})  # one transaction
    store.set_status(rid, RolloutStatus.PAUSED, "after the canary", wave=1)
    assert store.get(rid).promoted is False
    store.set_promoted(rid)
    store.close()

    again = RolloutStore(tmp_path / "state")
    rec = again.get(rid)
    assert rec.params == params and rec.waves == [["a"], ["b", "c"]]
    assert rec.status == RolloutStatus.PAUSED and rec.wave == 1 and rec.reason == "after the canary"
    assert rec.hosts == {"a": "active", "b": "activating", "c": "failed"}
    assert rec.promoted is True
    assert [r.id for r in again.list()] == [rid]
    with pytest.raises(NotFoundError) as err:
        again.get("r-nope")
    assert "cutover rollouts" in str(err.value)
    again.close()


def test_params_reject_unknown_fields() -> None:
    with pytest.raises(ValueError, match="extra"):
        RolloutParams.model_validate({"canary": {"value": 1}, "bake": 3})


def test_store_from_before_the_promoted_column_is_upgraded_in_place(tmp_path: Path) -> None:
    """A state dir written by an older controller keeps its rollouts (promoted = false)."""
    state = tmp_path / "state"
    state.mkdir()
    db = sqlite3.connect(state / "rollouts.db")
    old_schema = _SCHEMA.replace("    promoted INTEGER NOT NULL DEFAULT 0,\n", "")
    assert old_schema != _SCHEMA
    db.executescript(old_schema)
    db.execute(
        "INSERT INTO rollouts (id, app, version, fleet, owner, params, waves, status, created, "
        "updated) VALUES ('r-old', 'ame', '1.0', 'f', 'o', ?, '[[\"a\"]]', 'paused', 'x', 'x')",
        (RolloutParams().model_dump_json(),),
    )
    db.commit()
    db.close()
    store = RolloutStore(state)
    rec = store.get("r-old")
    assert rec.status == RolloutStatus.PAUSED and rec.promoted is False
    store.set_promoted("r-old")
    assert store.get("r-old").promoted is True
    store.close()
