"""Freeze windows: when activation is refused, and who may override (pure; time is a parameter).

Rules (docs/governance.md, "Freeze windows"):

1. Per app, the agent config lists **weekly** windows (days, ``from``-``to`` local time, an IANA
   timezone) and **dated** windows (aware ``from``/``to`` instants). Weekly times are wall-clock
   in the window's timezone, so a window keeps its local hours across DST changes. A weekly
   window whose ``to`` is not after ``from`` runs into the next day (``fri 18:00`` to ``08:00``);
   ``from == to`` is the whole day. A local time that a DST change skips or repeats takes the
   wider reading: a ``from`` its earliest meaning, a ``to`` its latest (a freeze errs on frozen).
2. A window applies to the release types it lists (default: all).
3. Activating a release inside an applying window is refused with the window's name, when it
   ends, and how to override, unless a valid signer of the release holds one of the window's
   ``override_roles``; then the activation goes ahead and the caller journals the override
   with that key.
4. Staging is allowed during a freeze, and **rollback is always allowed** (the emergency path):
   the lifecycle asks this module only when activating.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from cutover.agent.errors import FrozenError
from cutover.agent.package.manifest import ReleaseType

__all__ = [
    "DatedWindow",
    "FreezeHit",
    "FreezeSchedule",
    "WeeklyWindow",
    "check_freeze",
    "freeze_status",
    "refusing_window",
    "status_lines",
]

Day = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_DAYS: tuple[Day, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


class _Window(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    name: str = Field(min_length=1, max_length=100)
    release_types: list[ReleaseType] | None = None  # None: every type
    override_roles: list[str] = []

    def applies_to(self, release_type: str) -> bool:
        return self.release_types is None or release_type in self.release_types


class WeeklyWindow(_Window):
    """``[[apps.NAME.freeze.weekly]]``: e.g. days = ["fri"], from = "16:00", to = "23:59"."""

    days: list[Day] = Field(min_length=1)
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    timezone: str = "UTC"

    @field_validator("start", "end")
    @classmethod
    def _hhmm(cls, v: str) -> str:
        if not _HHMM.fullmatch(v):
            raise ValueError(f"{v!r} must be a 24-hour HH:MM time, e.g. 16:00")
        return v

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"{v!r} is not an IANA timezone, e.g. Europe/Paris") from exc
        return v

    def occurrences(self, around: datetime) -> list[tuple[datetime, datetime]]:
        """The (start, end) instants of this window from 8 days before ``around`` to 8 after."""
        tz = ZoneInfo(self.timezone)
        local = around.astimezone(tz).date()
        t0, t1 = time.fromisoformat(self.start), time.fromisoformat(self.end)
        out = []
        for offset in range(-8, 9):
            day = local + timedelta(days=offset)
            if _DAYS[day.weekday()] not in self.days:
                continue
            start = _instant(day, t0, tz, earliest=True)
            end = _instant(day + timedelta(days=1) if t1 <= t0 else day, t1, tz, earliest=False)
            out.append((start, end))
        return out


def _instant(day: date, t: time, tz: ZoneInfo, *, earliest: bool) -> datetime:
    """The UTC instant of local ``day t``. A time a DST change skips (spring forward) or repeats
    (fall back) has two readings, one per ``fold``; take the earliest or the latest."""
    local = datetime.combine(day, t, tzinfo=tz)
    readings = [local.replace(fold=f).astimezone(UTC) for f in (0, 1)]
    return min(readings) if earliest else max(readings)


class DatedWindow(_Window):
    """``[[apps.NAME.freeze.dated]]``: from/to are aware instants (TOML offset date-times)."""

    start: datetime = Field(alias="from")
    end: datetime = Field(alias="to")

    @model_validator(mode="after")
    def _order(self) -> DatedWindow:
        if self.start.utcoffset() is None or self.end.utcoffset() is None:
            raise ValueError("from and to need a UTC offset, e.g. 2026-12-24T00:00:00+01:00")
        if self.end <= self.start:
            raise ValueError("to must be after from")
        return self

    def occurrences(self, around: datetime) -> list[tuple[datetime, datetime]]:
        return [(self.start.astimezone(UTC), self.end.astimezone(UTC))]


class FreezeSchedule(BaseModel):
    """``[apps.NAME.freeze]``: the app's weekly and dated freeze windows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    weekly: list[WeeklyWindow] = []
    dated: list[DatedWindow] = []

    def windows(self) -> list[WeeklyWindow | DatedWindow]:
        return [*self.weekly, *self.dated]


@dataclass(frozen=True)
class FreezeHit:
    """One window active (or upcoming) at a given instant."""

    name: str
    starts_at: datetime
    ends_at: datetime
    release_types: tuple[str, ...] | None
    override_roles: tuple[str, ...]
    override_keyid: str | None = None  # the signer whose role overrode it, if any

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "release_types": list(self.release_types) if self.release_types else None,
            "override_roles": list(self.override_roles),
        }


def _hit(w: WeeklyWindow | DatedWindow, start: datetime, end: datetime) -> FreezeHit:
    types = tuple(t.value for t in w.release_types) if w.release_types is not None else None
    return FreezeHit(w.name, start, end, types, tuple(w.override_roles))


def _active(schedule: FreezeSchedule, now: datetime, release_type: str | None) -> list[FreezeHit]:
    hits = []
    for w in schedule.windows():
        if release_type is not None and not w.applies_to(release_type):
            continue
        for start, end in w.occurrences(now):
            if start <= now < end:
                hits.append(_hit(w, start, end))
    return hits


def freeze_status(
    schedule: FreezeSchedule, now: datetime, horizon: timedelta = timedelta(days=7)
) -> tuple[list[FreezeHit], list[FreezeHit]]:
    """(windows active at ``now``, windows starting within ``horizon``), soonest first."""
    upcoming = []
    for w in schedule.windows():
        starts = [(s, e) for s, e in w.occurrences(now) if now < s <= now + horizon]
        if starts:
            upcoming.append(_hit(w, *min(starts)))
    active = sorted(_active(schedule, now, None), key=lambda h: h.ends_at)
    return active, sorted(upcoming, key=lambda h: h.starts_at)


def status_lines(schedule: FreezeSchedule, now: datetime) -> list[str]:
    """What ``cutover-agent status`` prints about freezes at ``now``: each window in force (when
    it ends, how to override it), then each starting within a week (from, to)."""
    active, upcoming = freeze_status(schedule, now)
    lines = []
    for h in active:
        hint = f" (override: a signature by role {' or '.join(h.override_roles)})"
        lines.append(
            f"FROZEN    {h.name} until {h.ends_at.isoformat()}" + (hint if h.override_roles else "")
        )
    for h in upcoming:
        lines.append(
            f"freeze    {h.name} from {h.starts_at.isoformat()} to {h.ends_at.isoformat()}"
        )
    return lines


def check_freeze(
    schedule: FreezeSchedule,
    *,
    app: str,
    version: str,
    release_type: str,
    signers: Sequence[str],
    key_roles: Mapping[str, frozenset[str]],
    now: datetime,
) -> list[FreezeHit]:
    """Rule 3 of the module docstring.

    Returns:
        The windows that applied and were overridden, each with the overriding key id (empty:
        no window applied).

    Raises:
        FrozenError: a window applies and no signer holds one of its override roles; the
            message names the window, when it ends, and how to override.
    """
    overridden = []
    for hit in _active(schedule, now, release_type):
        key = next(
            (k for k in sorted(signers) if key_roles.get(k, frozenset()) & set(hit.override_roles)),
            None,
        )
        if key is None:
            how = (
                f"have a key with role {' or '.join(hit.override_roles)} sign the release "
                "(`cutover sign`) and stage it again"
                if hit.override_roles
                else "this window allows no override"
            )
            raise FrozenError(
                f"{app} {version} ({release_type}) cannot be activated: freeze window "
                f"{hit.name!r} is in force until {hit.ends_at.isoformat()}. Wait until it ends, "
                f"or {how}; staging is allowed and rollback is always allowed"
            )
        overridden.append(
            FreezeHit(
                hit.name,
                hit.starts_at,
                hit.ends_at,
                hit.release_types,
                hit.override_roles,
                override_keyid=key,
            )
        )
    return overridden


def refusing_window(
    schedule: FreezeSchedule,
    *,
    release_type: str,
    signers: Sequence[str],
    key_roles: Mapping[str, frozenset[str]],
    now: datetime,
) -> FreezeHit | None:
    """The window that would refuse activating such a release at ``now`` (None: none would).

    The same rule as :func:`check_freeze`, asked ahead of time: ``GET /v1/apps/{app}`` reports
    it for each staged release, so a rollout stops before a wave instead of meeting refusals.
    """
    for hit in sorted(_active(schedule, now, release_type), key=lambda h: h.ends_at):
        if not any(key_roles.get(k, frozenset()) & set(hit.override_roles) for k in signers):
            return hit
    return None
