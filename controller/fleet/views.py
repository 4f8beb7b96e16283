"""Fleet-wide views built from what the agents report (pure: no I/O).

* :func:`status_rows`: one :class:`StatusRow` per host; within each group, hosts whose
  ``current`` differs from the group's most common ``current`` are marked as drift (ties: the
  newest-looking version in file order wins the "expected" slot; unreachable hosts do not vote);
* :func:`merge_journals`: the release history of every host merged into one timeline, oldest
  first, keeping only entries about releases (stage, activate, revert, rollback, checkpoint).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict

from cutover.controller.fleet.agents import AppView, JournalEntry
from cutover.controller.fleet.inventory import HostSpec

__all__ = ["HISTORY_EVENTS", "LogRow", "StatusRow", "Unreadable", "merge_journals", "status_rows"]

HISTORY_EVENTS = {
    "stage.done": "staged",
    "stage.failed": "stage failed",
    "checkpoint.done": "checkpoint",
    "activate.done": "activated",
    "activate.reverted": "reverted",
    "rollback.done": "rolled back",
    "hooks.failed": "hook failed",
    "delete": "deleted",
}


@dataclass(frozen=True)
class Unreadable:
    """A host whose app view could not be read: ``reachable`` False when it did not answer."""

    reachable: bool
    error: str


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StatusRow(_Out):
    host: str
    url: str
    groups: list[str]
    reachable: bool  # False: no answer (connection, timeout, TLS)
    current: str | None = None
    previous: str | None = None
    staged: list[str] = []
    health: str | None = None
    busy: bool = False
    drift: bool = False
    drift_groups: list[str] = []
    expected: str | None = None  # the version most hosts of its group(s) run
    error: str | None = None  # why it could not be read (unreachable, or the agent's error)


class LogRow(_Out):
    ts: str
    host: str
    event: str
    result: str
    version: str | None = None
    previous: str | None = None
    actor: str | None = None
    checkpoint_ref: str | None = None
    detail: str | None = None
    seq: int


def status_rows(hosts: list[HostSpec], views: dict[str, AppView | Unreadable]) -> list[StatusRow]:
    """Rows in host order; ``views[name]`` is the host's app view or why it could not be read."""
    currents = {n: v.current for n, v in views.items() if isinstance(v, AppView)}
    expected: dict[str, str | None] = {}
    groups: dict[str, list[str]] = {}
    for h in hosts:
        for g in h.groups:
            groups.setdefault(g, []).append(h.name)
    for g, members in groups.items():
        votes = Counter(currents[m] for m in members if m in currents)
        if votes:
            top = max(votes.values())
            expected[g] = next(
                currents[m] for m in members if m in currents and votes[currents[m]] == top
            )
    rows = []
    for h in hosts:
        view = views.get(h.name, Unreadable(False, "not asked"))
        if not isinstance(view, AppView):
            rows.append(
                StatusRow(
                    host=h.name,
                    url=h.url,
                    groups=h.groups,
                    reachable=view.reachable,
                    error=view.error,
                )
            )
            continue
        drifting = [g for g in h.groups if g in expected and expected[g] != view.current]
        rows.append(
            StatusRow(
                host=h.name,
                url=h.url,
                groups=h.groups,
                reachable=True,
                current=view.current,
                previous=view.previous,
                staged=view.staged,
                health=view.last_health(),
                busy=bool(view.busy),
                drift=bool(drifting),
                drift_groups=drifting,
                expected=expected[drifting[0]] if drifting else None,
            )
        )
    return rows


def _detail(entry: JournalEntry) -> str | None:
    value = entry.reason or entry.error
    return None if value is None else str(value)[:300]


def _result(entry: JournalEntry) -> str:
    return HISTORY_EVENTS[entry.event]


def merge_journals(
    journals: dict[str, list[JournalEntry]], limit: int | None = None
) -> list[LogRow]:
    """Release history of every host, oldest first (ties: host name, then seq)."""
    rows = [
        LogRow(
            ts=e.ts,
            host=host,
            event=e.event,
            result=_result(e),
            version=e.version,
            previous=e.previous,
            actor=e.actor,
            checkpoint_ref=e.checkpoint_ref or e.ref,
            detail=_detail(e),
            seq=e.seq,
        )
        for host, entries in journals.items()
        for e in entries
        if e.event in HISTORY_EVENTS
    ]
    rows.sort(key=lambda r: (r.ts, r.host, r.seq))
    return rows[-limit:] if limit else rows
