"""Leases on the agent (agent/daemon/leases.py): one live lease per app, expiry, steal, renew.

Real files in ``tmp_path``; a settable clock instead of waiting for expiry.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cutover.agent.daemon.leases import LeaseTable
from cutover.agent.errors import LockedError


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


def table(tmp_path: Path, clock: Clock) -> LeaseTable:
    return LeaseTable(tmp_path, clock=clock)


def audit(tmp_path: Path) -> list[dict[str, object]]:
    path = tmp_path / "leases.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_a_second_rollout_is_refused_naming_the_holder_and_nothing_changes(
    tmp_path: Path, clock: Clock
) -> None:
    t = table(tmp_path, clock)
    first = t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30)
    saved = (tmp_path / "leases.json").read_bytes()
    with pytest.raises(LockedError) as err:
        t.acquire("ame", rollout="r-2", owner="bob@laptop", actor="api:bob", ttl_s=30)
    assert err.value.holder["rollout"] == "r-1" and err.value.holder["owner"] == "alice@ci"
    assert "r-1" in str(err.value) and "--steal" in str(err.value)
    assert t.held("ame") == first
    assert (tmp_path / "leases.json").read_bytes() == saved
    assert [e["event"] for e in audit(tmp_path)] == ["lease.acquire"]


def test_a_stale_lease_expires_by_itself(tmp_path: Path, clock: Clock) -> None:
    t = table(tmp_path, clock)
    t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30)
    clock.now += 30
    assert t.held("ame") is None
    t.check("ame", None, "activate 1.0")  # nothing in the way any more
    second = t.acquire("ame", rollout="r-2", owner="bob@ci", actor="api:bob", ttl_s=30)
    assert t.held("ame") == second


def test_steal_takes_over_and_is_recorded_with_the_actor(tmp_path: Path, clock: Clock) -> None:
    t = table(tmp_path, clock)
    first = t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30)
    second = t.acquire("ame", rollout="r-2", owner="bob@ci", actor="api:bob", ttl_s=30, steal=True)
    assert second.id != first.id and t.held("ame") == second
    steal = audit(tmp_path)[-1]
    assert steal["event"] == "lease.steal" and steal["actor"] == "api:bob"
    assert steal["replaced"]["rollout"] == "r-1"  # type: ignore[index]
    with pytest.raises(LockedError) as err:  # the old holder cannot renew what was taken
        t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30, renew=first.id)
    assert err.value.code == "lease_lost"


def test_renew_extends_and_an_expired_lease_cannot_be_renewed(tmp_path: Path, clock: Clock) -> None:
    t = table(tmp_path, clock)
    lease = t.acquire("ame", rollout="r-1", owner="a@b", actor="api:ci", ttl_s=30)
    clock.now += 20
    renewed = t.acquire("ame", rollout="r-1", owner="a@b", actor="api:ci", ttl_s=30, renew=lease.id)
    assert renewed.id == lease.id and renewed.expires_at == clock.now + 30
    clock.now += 31
    with pytest.raises(LockedError) as err:
        t.acquire("ame", rollout="r-1", owner="a@b", actor="api:ci", ttl_s=30, renew=lease.id)
    assert err.value.code == "lease_lost" and t.held("ame") is None


@pytest.mark.parametrize(
    ("given", "refused"),
    [("own", False), ("none", True), ("other", True)],
    ids=["the-lease-id-passes", "no-lease-id-refused", "another-id-refused"],
)
def test_activation_must_carry_the_live_lease(
    tmp_path: Path, clock: Clock, given: str, refused: bool
) -> None:
    t = table(tmp_path, clock)
    lease = t.acquire("ame", rollout="r-1", owner="a@b", actor="api:ci", ttl_s=30)
    lease_id = {"own": lease.id, "none": None, "other": "lease-0000000000000000"}[given]
    if refused:
        with pytest.raises(LockedError) as err:
            t.check("ame", lease_id, "activate 1.0")
        assert err.value.holder["lease"] == lease.id
    else:
        t.check("ame", lease_id, "activate 1.0")
    t.check("other-app", None, "activate 1.0")  # leases are per app


def test_a_lease_id_that_expired_is_refused_at_activation(tmp_path: Path, clock: Clock) -> None:
    t = table(tmp_path, clock)
    lease = t.acquire("ame", rollout="r-1", owner="a@b", actor="api:ci", ttl_s=30)
    clock.now += 60
    with pytest.raises(LockedError) as err:
        t.check("ame", lease.id, "activate 1.0")
    assert err.value.code == "lease_lost"


def test_leases_survive_a_restart_and_release_is_idempotent(tmp_path: Path, clock: Clock) -> None:
    lease = table(tmp_path, clock).acquire("ame", rollout="r-1", owner="a@b", actor="x", ttl_s=30)
    again = table(tmp_path, clock)
    assert again.held("ame") == lease
    assert again.release("ame", lease.id, "x") is True
    assert again.release("ame", lease.id, "x") is False
    assert table(tmp_path, clock).held("ame") is None
    assert [e["event"] for e in audit(tmp_path)] == ["lease.acquire", "lease.release"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_steal_the_daemon_cannot_journal_changes_nothing(tmp_path: Path, clock: Clock) -> None:
    """The daemon journals a steal in the app's journal first (agent/daemon/lease_routes.py);
    when it cannot (the app is busy), the steal is refused and the old lease stays."""
    t = table(tmp_path, clock)
    first = t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30)
    saved = (tmp_path / "leases.json").read_bytes()
    seen: list[tuple[str, str]] = []

    def busy(new: object, replaced: object) -> None:
        seen.append((new.rollout, replaced.rollout))  # type: ignore[attr-defined]
        raise LockedError("app 'ame' is busy: activate by pid 7", holder={"pid": 7})

    with pytest.raises(LockedError, match="busy"):
        t.acquire(
            "ame", rollout="r-2", owner="bob@ci", actor="api:bob", ttl_s=30, steal=True,
            on_steal=busy,
        )  # fmt: skip
    assert seen == [("r-2", "r-1")]
    assert t.held("ame") == first
    assert (tmp_path / "leases.json").read_bytes() == saved
    assert [e["event"] for e in audit(tmp_path)] == ["lease.acquire"]
    # a plain renew or take by the holder never calls it
    t.acquire("ame", rollout="r-1", owner="alice@ci", actor="api:ci", ttl_s=30, on_steal=busy)
    assert len(seen) == 1
