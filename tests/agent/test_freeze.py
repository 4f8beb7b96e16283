"""Freeze windows as a pure function of an injected instant (no sleeping): weekly windows in an
IANA timezone (across midnight and DST), dated windows, release types, override roles."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from cutover.agent.errors import FrozenError
from cutover.agent.trust.freeze import FreezeSchedule, check_freeze, freeze_status

SCHEDULE = FreezeSchedule.model_validate(
    {
        "weekly": [
            {
                "name": "friday-evening",
                "days": ["fri"],
                "from": "18:00",
                "to": "08:00",  # runs into Saturday morning
                "timezone": "Europe/Paris",
                "release_types": ["major", "minor"],
                "override_roles": ["management"],
            }
        ],
        "dated": [
            {
                "name": "black-friday",
                "from": datetime(2026, 11, 27, 0, 0, tzinfo=UTC),
                "to": datetime(2026, 11, 30, 0, 0, tzinfo=UTC),
            }
        ],
    }
)
ROLES = {"m" * 64: frozenset({"management"}), "t" * 64: frozenset({"technical"})}


def _check(now: datetime, release_type: str = "minor", signers: tuple[str, ...] = ("t" * 64,)):
    return check_freeze(
        SCHEDULE,
        app="ame",
        version="1.1.0",
        release_type=release_type,
        signers=signers,
        key_roles=ROLES,
        now=now,
    )


@pytest.mark.parametrize(
    ("now", "frozen"),
    [
        # 2026-03-06 is a Friday; Paris is UTC+1 in March before the 29th, UTC+2 after.
        pytest.param(datetime(2026, 3, 6, 16, 59, tzinfo=UTC), False, id="fri-17:59-paris"),
        pytest.param(datetime(2026, 3, 6, 17, 0, tzinfo=UTC), True, id="fri-18:00-paris"),
        pytest.param(datetime(2026, 3, 7, 6, 59, tzinfo=UTC), True, id="sat-07:59-paris"),
        pytest.param(datetime(2026, 3, 7, 7, 0, tzinfo=UTC), False, id="sat-08:00-paris"),
        pytest.param(datetime(2026, 4, 3, 16, 0, tzinfo=UTC), True, id="fri-18:00-paris-summer"),
        pytest.param(datetime(2026, 3, 5, 20, 0, tzinfo=UTC), False, id="thursday"),
    ],
)
def test_weekly_window_follows_local_wall_clock(now: datetime, frozen: bool) -> None:
    if frozen:
        with pytest.raises(FrozenError, match="'friday-evening' is in force until"):
            _check(now)
    else:
        assert _check(now) == []


def test_refusal_says_when_the_window_ends_and_how_to_override() -> None:
    with pytest.raises(FrozenError) as exc:
        _check(datetime(2026, 3, 6, 20, 0, tzinfo=UTC))
    msg = str(exc.value)
    assert "until 2026-03-07T07:00:00+00:00" in msg and "role management" in msg
    assert "rollback is always allowed" in msg


def test_a_window_applies_only_to_its_release_types() -> None:
    assert _check(datetime(2026, 3, 6, 20, 0, tzinfo=UTC), release_type="patch") == []


def test_an_override_role_signature_lets_it_through_and_names_the_key() -> None:
    hits = _check(datetime(2026, 3, 6, 20, 0, tzinfo=UTC), signers=("t" * 64, "m" * 64))
    assert [(h.name, h.override_keyid) for h in hits] == [("friday-evening", "m" * 64)]


def test_dated_window_applies_to_all_types_and_has_no_override() -> None:
    with pytest.raises(FrozenError, match=r"'black-friday'.*this window allows no override"):
        _check(datetime(2026, 11, 28, 12, 0, tzinfo=UTC), release_type="patch", signers=("m" * 64,))
    assert _check(datetime(2026, 11, 30, 0, 0, tzinfo=UTC), release_type="patch") == []


def test_status_lists_active_and_upcoming_windows() -> None:
    active, upcoming = freeze_status(SCHEDULE, datetime(2026, 3, 6, 20, 0, tzinfo=UTC))
    assert [h.name for h in active] == ["friday-evening"] and upcoming
    active, upcoming = freeze_status(SCHEDULE, datetime(2026, 11, 24, 12, 0, tzinfo=UTC))
    assert active == []
    assert [h.name for h in upcoming] == ["black-friday", "friday-evening"]
    assert upcoming[0].starts_at == datetime(2026, 11, 27, tzinfo=UTC)


@pytest.mark.parametrize(
    "window",
    [
        {"name": "x", "days": ["fri"], "from": "25:00", "to": "08:00"},
        {"name": "x", "days": ["fri"], "from": "18:00", "to": "08:00", "timezone": "Mars/Base"},
        {"name": "x", "days": ["friday"], "from": "18:00", "to": "08:00"},
    ],
    ids=["bad-time", "bad-timezone", "bad-day"],
)
def test_malformed_weekly_windows_are_config_errors(window: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        FreezeSchedule.model_validate({"weekly": [window]})
