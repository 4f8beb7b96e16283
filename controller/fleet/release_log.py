"""The fleet's release log: one row per version, merged from every host's release records and
journal (pure: no I/O).

``cutover log`` prints Version | Date | Type | Owner | Status | Notes, newest first:

* **Date**: the version's first activation on any host (the records' ``first_activated_at``,
  never overwritten; from older agents the journals' ``activate.done`` and the records'
  ``activated_at``), else when a host first staged it; compared as instants;
* **Type**, **Owner**, **Notes**: from the signed manifest as each host recorded it (Notes: the
  structured notes' summary, else the first line of the free-text notes);
* **Status**: each host's state of the version, counted (``active 2, rolled back 1``):
  ``active``, ``staged`` (never activated), ``superseded`` (a newer activation replaced it),
  ``rolled back`` (a rollback left it: the record's ``left_by``, else the journal), ``reverted`` (its activation failed and was undone: marked
  bad), ``activation failed``, ``stage failed``, ``adopted``; ``, pruned`` when its files are gone;
* **Integrity**: a version is one release everywhere. Each agent refuses a second build of a
  version it holds, but two hosts can each have taken a different build under the same name; only
  the fleet-wide view sees that. Hosts whose records give the same version different manifest
  digests make the row an **integrity failure**, with every host's manifest and payload digest.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime

from pydantic import BaseModel, ConfigDict

from cutover.controller.fleet.agents import AppView, JournalEntry, ReleaseView

__all__ = [
    "HostRelease",
    "ReleaseRow",
    "display_date",
    "integrity_message",
    "release_log",
    "release_log_markdown",
]

NOTES_WIDTH = 120  # characters of the notes in a table cell (the JSON keeps them whole)


class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class HostRelease(_Out):
    """One host's record of a version."""

    status: str
    manifest_digest: str
    payload_digest: str


class ReleaseRow(_Out):
    """One version of the fleet's release log."""

    version: str
    date: str | None  # ISO 8601 UTC instant (see the module docstring)
    release_type: str
    owner: str
    status: str  # the hosts' states, counted
    notes: str
    integrity_failure: bool  # the hosts hold different content under this version
    hosts: dict[str, HostRelease]


def _left(entries: list[JournalEntry]) -> dict[str, str]:
    """version -> how ``current`` last left it on this host (``rollback`` or ``activate``)."""
    left: dict[str, str] = {}
    for e in entries:
        if e.event in ("activate.done", "rollback.done") and e.previous:
            left[e.previous] = e.event.split(".")[0]
    return left


def _host_status(rec: ReleaseView, left: dict[str, str]) -> str:
    if rec.status == "active":
        return "active"
    if rec.status == "bad":
        word = "reverted"
    elif rec.status == "failed":
        word = "activation failed" if rec.installed else "stage failed"
    elif rec.adopted:
        word = "adopted"
    elif rec.activated_at is None:
        word = "staged"
    else:
        how = rec.left_by or left.get(rec.version)  # the record's, else the journal window's
        word = "rolled back" if how == "rollback" else "superseded"
    return word if rec.installed or rec.status == "failed" else f"{word}, pruned"


def _notes(rec: ReleaseView) -> str:
    lines = (rec.summary or rec.notes).strip().splitlines()
    return lines[0].strip() if lines else ""


def _one(values: list[str]) -> str:
    """The hosts' value of a field; several (only with an integrity failure) joined by ' / '."""
    return " / ".join(dict.fromkeys(v for v in values if v))


def _instant(text: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo is not None else t.replace(tzinfo=UTC)


def _earliest(stamps: list[str]) -> str | None:
    """The earliest of ISO 8601 instants (compared as instants, not as text)."""
    parsed = [(t, s) for s in stamps if (t := _instant(s)) is not None]
    return min(parsed)[1] if parsed else None


def _date(
    version: str, recs: list[ReleaseView], journals: dict[str, list[JournalEntry]]
) -> str | None:
    first = _earliest([r.first_activated_at for r in recs if r.first_activated_at])
    if first is not None:  # the records keep it: no dependence on the journal window
        return first
    activated = [  # agents from before first_activated_at: the journal window and the record
        e.ts
        for entries in journals.values()
        for e in entries
        if e.event == "activate.done" and e.version == version
    ]
    activated += [r.activated_at for r in recs if r.activated_at]
    return _earliest(activated) or _earliest([r.staged_at for r in recs if r.staged_at])


def release_log(
    views: dict[str, AppView],
    journals: dict[str, list[JournalEntry]],
    limit: int | None = None,
) -> list[ReleaseRow]:
    """The release log of the hosts that answered, newest first (ties: version).

    Args:
        views: host -> its app view (``GET /v1/apps/{app}``, every release record).
        journals: host -> its journal entries, oldest first (may be cut short: a version whose
            leaving is no longer in the journal reads ``superseded``).
        limit: keep the newest N versions.
    """
    per_version: dict[str, dict[str, ReleaseView]] = {}
    for host in sorted(views):
        for rec in views[host].releases:
            per_version.setdefault(rec.version, {})[host] = rec
    rows = []
    for version, by_host in per_version.items():
        recs = list(by_host.values())
        left = {h: _left(journals.get(h, [])) for h in by_host}
        hosts = {
            h: HostRelease(
                status=_host_status(r, left[h]),
                manifest_digest=r.manifest_digest,
                payload_digest=r.payload_digest,
            )
            for h, r in by_host.items()
        }
        counts = Counter(hr.status for hr in hosts.values())
        digests = {r.manifest_digest for r in recs if r.manifest_digest and not r.adopted}
        rows.append(
            ReleaseRow(
                version=version,
                date=_date(version, recs, journals),
                release_type=_one([r.release_type for r in recs]),
                owner=_one([r.owner for r in recs]),
                status=", ".join(f"{word} {n}" for word, n in counts.most_common()),
                notes=_one([_notes(r) for r in recs]),
                integrity_failure=len(digests) > 1,
                hosts=hosts,
            )
        )
    rows.sort(key=lambda r: (r.date or "", r.version), reverse=True)
    return rows[:limit] if limit else rows


def integrity_message(app: str, row: ReleaseRow) -> str:
    """What an integrity failure means, which host holds what, and what to do next."""
    held = "; ".join(
        f"{h}: manifest {r.manifest_digest[:16]} payload {r.payload_digest[:16] or '?'}"
        for h, r in sorted(row.hosts.items())
        if r.manifest_digest
    )
    return (
        f"INTEGRITY FAILURE: {app} {row.version} is not the same release on every host ({held}). "
        "A version must never be rebuilt: find the build you released (`cutover inspect "
        "PACKAGE` shows its manifest and payload sha256), check on each host how the other one got there "
        "(`cutover-agent journal`: who staged it, signed by which key), and ship the fix as a "
        "new version"
    )


def _cell(text: str, width: int | None = None) -> str:
    text = " ".join(text.split())
    if width is not None and len(text) > width:
        text = text[: width - 1] + "…"
    return text.replace("|", "\\|") or "-"


def display_date(date: str | None) -> str:
    """``2026-03-07 12:00`` (UTC) of an ISO instant."""
    return date[:16].replace("T", " ") if date else "-"


def release_log_markdown(app: str, rows: list[ReleaseRow], missing: dict[str, str]) -> str:
    """The log as a Markdown table (``--format md``), integrity failures and silent hosts after it."""
    lines = [
        f"# Release log: {app}",
        "",
        "| Version | Date (UTC) | Type | Owner | Status | Notes |",
        "|---|---|---|---|---|---|",
    ]
    for r in rows:
        status = f"**INTEGRITY FAILURE**, {r.status}" if r.integrity_failure else r.status
        cells = (r.version, display_date(r.date), r.release_type, r.owner, status)
        lines.append(
            "| " + " | ".join(_cell(c) for c in cells) + f" | {_cell(r.notes, NOTES_WIDTH)} |"
        )
    failures = [integrity_message(app, r) for r in rows if r.integrity_failure]
    notes = [f"- {m}" for m in failures] + [
        f"- {host}: no history: {why}" for host, why in sorted(missing.items())
    ]
    return "\n".join([*lines, *(["", *notes] if notes else [])]) + "\n"
