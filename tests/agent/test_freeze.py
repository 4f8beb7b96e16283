"""Freeze windows as a pure function of an injected instant (no sleeping): weekly windows in an
IANA timezone (across midnight and DST), dated windows, release types, override roles."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from cutover.agent.config import load_config
from cutover.agent.errors import FrozenError
from cutover.agent.lifecycle.manager import AppManager
from cutover.agent.trust.freeze import (
    FreezeSchedule,
    check_freeze,
    freeze_status,
    refusing_window,
    status_lines,
)
from tests.conftest import Host, PackageFactory

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


def _weekly(days: list[str], start: str, end: str, tz: str = "Europe/Paris") -> FreezeSchedule:
    return FreezeSchedule.model_validate(
        {"weekly": [{"name": "w", "days": days, "from": start, "to": end, "timezone": tz}]}
    )


def _frozen(schedule: FreezeSchedule, now: datetime) -> bool:
    active, _ = freeze_status(schedule, now)
    return bool(active)


def _utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)  # type: ignore[misc]


# Europe/Paris: 2026-03-29 02:00 CET -> 03:00 CEST (02:00-02:59 never happens); 2026-10-25
# 03:00 CEST -> 02:00 CET (02:00-02:59 happens twice). Instants below are UTC.
@pytest.mark.parametrize(
    ("days", "start", "end", "now", "frozen"),
    [
        # a window over the spring-forward jump lasts two real hours (01:00 CET - 04:00 CEST)
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 3, 28, 23, 59), False, id="spring-before"),
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 3, 29, 0, 0), True, id="spring-start"),
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 3, 29, 1, 59), True, id="spring-last-minute"),
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 3, 29, 2, 0), False, id="spring-end"),
        # the same window the week before, in winter time: three real hours
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 3, 22, 2, 30), True, id="winter-week"),
        # over the fall-back repeat it lasts four real hours (01:00 CEST - 04:00 CET)
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 10, 24, 23, 0), True, id="fall-start"),
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 10, 25, 2, 59), True, id="fall-last-minute"),
        pytest.param(["sun"], "01:00", "04:00", _utc(2026, 10, 25, 3, 0), False, id="fall-end"),
        # a start inside the skipped hour: frozen from when the clock jumps past it at the latest
        # (03:15 CEST is after 02:30 on the wall clock)
        pytest.param(["sun"], "02:30", "05:00", _utc(2026, 3, 29, 1, 15), True, id="start-in-gap"),
        pytest.param(["sun"], "02:30", "05:00", _utc(2026, 3, 29, 3, 0), False, id="gap-window-end"),
        # an end inside the repeated hour: frozen until its second occurrence (02:15 CET, the
        # second pass, is still before 02:30 on the wall clock)
        pytest.param(["sun"], "01:00", "02:30", _utc(2026, 10, 25, 1, 15), True, id="end-in-repeat"),
        pytest.param(["sun"], "01:00", "02:30", _utc(2026, 10, 25, 1, 30), False, id="repeat-end"),
        # a midnight-spanning window over the spring-forward night: sat 22:00 CET - sun 04:00 CEST
        pytest.param(["sat"], "22:00", "04:00", _utc(2026, 3, 28, 21, 0), True, id="night-start"),
        pytest.param(["sat"], "22:00", "04:00", _utc(2026, 3, 29, 1, 59), True, id="night-end-1"),
        pytest.param(["sat"], "22:00", "04:00", _utc(2026, 3, 29, 2, 0), False, id="night-ended"),
    ],
)  # fmt: skip
def test_weekly_windows_across_dst_changes_follow_the_wall_clock(
    days: list[str], start: str, end: str, now: datetime, frozen: bool
) -> None:
    """Weekly windows keep their local hours across DST: a window is in force at every instant
    the local wall clock shows a time inside it; a skipped or repeated local time takes the wider
    reading (a start at its earliest meaning, an end at its latest)."""
    assert _frozen(_weekly(days, start, end), now) is frozen


@pytest.mark.parametrize(
    ("days", "start", "end", "now", "frozen"),
    [
        pytest.param(["fri"], "22:00", "02:00", _utc(2026, 3, 7, 0, 30), True, id="into-saturday"),
        pytest.param(["fri"], "22:00", "02:00", _utc(2026, 3, 6, 0, 30), False, id="not-from-thursday"),
        pytest.param(["fri"], "22:00", "02:00", _utc(2026, 3, 7, 1, 0), False, id="ends-sat-02:00"),
        pytest.param(["sun"], "23:00", "01:00", _utc(2026, 3, 8, 23, 30), True, id="sunday-into-monday"),
        pytest.param(["fri"], "00:00", "00:00", _utc(2026, 3, 6, 22, 59), True, id="whole-day-last-minute"),
        pytest.param(["fri"], "00:00", "00:00", _utc(2026, 3, 6, 23, 0), False, id="whole-day-over"),
        pytest.param(["fri"], "00:00", "00:00", _utc(2026, 3, 5, 23, 0), True, id="whole-day-first"),
    ],
)  # fmt: skip
def test_midnight_spanning_weekly_windows(
    days: list[str], start: str, end: str, now: datetime, frozen: bool
) -> None:
    """``to`` not after ``from`` runs into the next day (the window belongs to its start day);
    ``from == to`` is the whole day. 2026-03-06 is a Friday; Paris is UTC+1 in early March."""
    assert _frozen(_weekly(days, start, end), now) is frozen


DATED = FreezeSchedule.model_validate(
    {
        "dated": [
            {
                "name": "xmas",
                "from": datetime.fromisoformat("2026-12-24T00:00:00+01:00"),
                "to": datetime.fromisoformat("2026-12-27T00:00:00+01:00"),
            }
        ]
    }
)


@pytest.mark.parametrize(
    ("now", "frozen"),
    [
        pytest.param(_utc(2026, 12, 23, 22, 59, 59), False, id="just-before-from"),
        pytest.param(_utc(2026, 12, 23, 23, 0), True, id="at-from"),
        pytest.param(datetime(2026, 12, 26, 22, 59, 59, 999999, tzinfo=UTC), True, id="just-before-to"),
        pytest.param(_utc(2026, 12, 26, 23, 0), False, id="at-to"),
    ],
)  # fmt: skip
def test_dated_windows_include_from_and_exclude_to(now: datetime, frozen: bool) -> None:
    """``from`` is in the window and ``to`` is not, compared as instants (offsets honoured)."""
    assert _frozen(DATED, now) is frozen
    if frozen:
        with pytest.raises(
            FrozenError, match=r"'xmas' is in force until 2026-12-26T23:00:00\+00:00"
        ):
            check_freeze(
                DATED,
                app="ame",
                version="1",
                release_type="patch",
                signers=(),
                key_roles={},
                now=now,
            )


def test_status_shows_the_window_in_force_and_the_upcoming_ones_at_an_injected_instant() -> None:
    """The lines ``cutover-agent status`` prints (agent/cli/_commands.py calls this with its
    clock): in force, with its end and override; then the next occurrences within a week."""
    assert status_lines(SCHEDULE, _utc(2026, 3, 6, 20, 0)) == [
        "FROZEN    friday-evening until 2026-03-07T07:00:00+00:00"
        " (override: a signature by role management)",
        "freeze    friday-evening from 2026-03-13T17:00:00+00:00 to 2026-03-14T07:00:00+00:00",
    ]
    assert status_lines(SCHEDULE, _utc(2026, 11, 24, 12, 0)) == [
        "freeze    black-friday from 2026-11-27T00:00:00+00:00 to 2026-11-30T00:00:00+00:00",
        "freeze    friday-evening from 2026-11-27T17:00:00+00:00 to 2026-11-28T07:00:00+00:00",
    ]
    assert status_lines(FreezeSchedule(), _utc(2026, 11, 24, 12, 0)) == []


@pytest.mark.parametrize(
    ("now", "listed"),
    [
        pytest.param(_utc(2026, 11, 20, 0, 0), True, id="starts-in-exactly-a-week"),
        pytest.param(_utc(2026, 11, 19, 23, 59), False, id="starts-in-more-than-a-week"),
        pytest.param(_utc(2026, 11, 27, 0, 0), False, id="started-now-is-in-force"),
    ],
)
def test_upcoming_means_starting_within_a_week(now: datetime, listed: bool) -> None:
    active, upcoming = freeze_status(DATED_BF, now)
    assert [h.name for h in upcoming] == (["black-friday"] if listed else [])
    assert bool(active) is (now == _utc(2026, 11, 27, 0, 0))


DATED_BF = FreezeSchedule(dated=SCHEDULE.dated)


def test_activation_reads_the_injected_clock(host: Host, make_package: PackageFactory) -> None:
    """The lifecycle asks the freeze rules at the instant its clock gives (never the wall clock
    in tests): on a Friday evening in Paris the activation is refused with nothing changed; on
    the Thursday before, the same activation goes ahead; rollback at the frozen instant is
    allowed."""
    host.config.write_text(
        host.config.read_text()
        + '[[apps.demo.freeze.weekly]]\nname = "friday-evening"\ndays = ["fri"]\n'
        'from = "18:00"\nto = "08:00"\ntimezone = "Europe/Paris"\n'
    )
    cfg = load_config(host.config)

    def manager(now: datetime) -> AppManager:
        return AppManager(
            "demo", cfg.apps["demo"], cfg.policies["demo"], actor="test", clock=lambda: now
        )

    friday, thursday = _utc(2026, 3, 6, 20, 0), _utc(2026, 3, 5, 20, 0)
    for version in ("1.0.0", "1.0.1"):
        asyncio.run(manager(thursday).stage(make_package(version)))
    asyncio.run(manager(thursday).activate("1.0.0"))
    before = host.snapshot()
    with pytest.raises(FrozenError, match="'friday-evening' is in force until 2026-03-07T07:00"):
        asyncio.run(manager(friday).activate("1.0.1"))
    assert host.snapshot() == before
    assert asyncio.run(manager(thursday).activate("1.0.1")).current == "1.0.1"
    assert asyncio.run(manager(friday).rollback()).current == "1.0.0"
    assert host.current == "releases/1.0.0"


@pytest.mark.parametrize(
    ("now", "release_type", "signers"),
    [
        pytest.param(datetime(2026, 3, 6, 20, 0, tzinfo=UTC), "minor", ("t" * 64,), id="frozen"),
        pytest.param(
            datetime(2026, 3, 6, 20, 0, tzinfo=UTC), "patch", ("t" * 64,), id="other-type"
        ),
        pytest.param(
            datetime(2026, 3, 6, 20, 0, tzinfo=UTC), "minor", ("m" * 64,), id="overridden"
        ),
        pytest.param(
            datetime(2026, 11, 28, 12, 0, tzinfo=UTC), "patch", ("m" * 64,), id="no-override"
        ),
        pytest.param(datetime(2026, 3, 5, 20, 0, tzinfo=UTC), "minor", ("t" * 64,), id="free"),
    ],
)
def test_refusing_window_asks_ahead_what_activation_would_refuse(
    now: datetime, release_type: str, signers: tuple[str, ...]
) -> None:
    """GET /v1/apps/{app} reports this per staged release; it must agree with check_freeze."""
    hit = refusing_window(
        SCHEDULE, release_type=release_type, signers=signers, key_roles=ROLES, now=now
    )
    try:
        _check(now, release_type, signers)
    except FrozenError as exc:
        assert hit is not None and f"{hit.name!r} is in force until" in str(exc)
    else:
        assert hit is None
