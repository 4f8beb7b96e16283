"""The fleet's release log as a pure function of what agents answered (controller/fleet/release_log.py):
each host's status of a version, the date, the notes, the integrity mark and the Markdown table.
The real agents and CLI: tests/e2e/test_governance_fleet.py."""

from __future__ import annotations

from typing import Any

import pytest

from cutover.controller.fleet.agents import AppView, JournalEntry
from cutover.controller.fleet.release_log import release_log, release_log_markdown

A, B = "a" * 64, "b" * 64


def _rec(version: str, status: str, **kw: Any) -> dict[str, Any]:
    return {"version": version, "status": status, "manifest_digest": A, **kw}


def _view(*records: dict[str, Any]) -> AppView:
    return AppView.model_validate({"app": "ame", "releases": list(records)})


def _journal(*events: tuple[str, str, str | None]) -> list[JournalEntry]:
    return [
        JournalEntry(seq=i, ts=f"2026-03-0{i}T10:00:00Z", event=ev, version=v, previous=prev)
        for i, (ev, v, prev) in enumerate(events, 1)
    ]


@pytest.mark.parametrize(
    ("record", "events", "status"),
    [
        pytest.param(_rec("1", "active", activated_at="t"), [], "active", id="active"),
        pytest.param(_rec("1", "staged"), [], "staged", id="staged-never-active"),
        pytest.param(
            _rec("1", "previous", activated_at="t"),
            [("activate.done", "2", "1")],
            "superseded",
            id="superseded",
        ),
        pytest.param(
            _rec("1", "staged", activated_at="t"),
            [("activate.done", "2", "1"), ("rollback.done", "1", "2"), ("rollback.done", "0", "1")],
            "rolled back",
            id="rolled-back",
        ),
        pytest.param(
            _rec("1", "staged", activated_at="t"),
            [("rollback.done", "0", "1"), ("activate.done", "1", "0"), ("activate.done", "2", "1")],
            "superseded",
            id="rolled-back-then-superseded",
        ),
        pytest.param(_rec("1", "bad", activated_at="t"), [], "reverted", id="bad"),
        pytest.param(_rec("1", "failed", installed=False), [], "stage failed", id="stage-failed"),
        pytest.param(_rec("1", "failed"), [], "activation failed", id="activation-failed"),
        pytest.param(
            _rec("1", "previous", activated_at="t", installed=False),
            [],
            "superseded, pruned",
            id="pruned",
        ),
        pytest.param(
            _rec("1", "staged", installed=False), [], "staged, pruned", id="pruned-unused"
        ),
        pytest.param(
            _rec("1", "staged", adopted=True, manifest_digest=""), [], "adopted", id="adopted"
        ),
    ],
)
def test_each_host_status_of_a_version(
    record: dict[str, Any], events: list[tuple[str, str, str | None]], status: str
) -> None:
    [row] = release_log({"web-1": _view(record)}, {"web-1": _journal(*events)})
    assert row.hosts["web-1"].status == status
    assert row.status == f"{status} 1"


def test_fields_come_from_the_records_and_the_date_is_the_first_activation() -> None:
    """Type, owner and notes as recorded from the signed manifest (summary first, else the first
    line of the free-text notes); date: the earliest activation anywhere, else staging."""
    views = {
        "web-1": _view(
            _rec("2", "active", release_type="minor", owner="bob", summary="CSV export",
                 notes="long\ntext", activated_at="2026-03-05T09:00:00Z"),
            _rec("3", "staged", staged_at="2026-03-06T08:00:00Z", notes="\n first line \nx"),
        ),
        "web-2": _view(_rec("2", "previous", activated_at="2026-03-09T09:00:00Z")),
    }  # fmt: skip
    journals = {"web-2": _journal(("activate.done", "2", None), ("activate.done", "3", "2"))}
    rows = release_log(views, journals)
    assert [r.version for r in rows] == ["3", "2"]  # newest first
    three, two = rows
    assert (two.release_type, two.owner, two.notes) == ("minor", "bob", "CSV export")
    assert two.date == "2026-03-01T10:00:00Z"  # web-2's journal: before either record's
    assert two.status == "active 1, superseded 1"
    assert three.date == "2026-03-02T10:00:00Z" and three.notes == "first line"
    assert release_log(views, journals, limit=1) == [three]


def test_a_version_with_different_manifests_on_two_hosts_is_an_integrity_failure() -> None:
    same = {"web-1": _view(_rec("1", "active")), "web-2": _view(_rec("1", "active"))}
    assert release_log(same, {})[0].integrity_failure is False
    other = {**same, "web-3": _view(_rec("1", "staged", manifest_digest=B, payload_digest="p"))}
    [row] = release_log(other, {})
    assert row.integrity_failure is True
    assert {h: r.manifest_digest for h, r in row.hosts.items()} == {
        "web-1": A,
        "web-2": A,
        "web-3": B,
    }
    # an adopted release (no manifest) on a host is not a second build
    adopted = {**same, "web-3": _view(_rec("1", "staged", adopted=True, manifest_digest=""))}
    assert release_log(adopted, {})[0].integrity_failure is False


def test_markdown_table_escapes_cells_and_lists_failures_and_silent_hosts() -> None:
    views = {
        "web-1": _view(_rec("1", "active", owner="a|b", summary="x" * 200)),
        "web-2": _view(_rec("1", "active", manifest_digest=B)),
    }
    md = release_log_markdown("ame", release_log(views, {}), {"web-3": "unreachable: refused"})
    lines = md.splitlines()
    assert lines[:4] == [
        "# Release log: ame",
        "",
        "| Version | Date (UTC) | Type | Owner | Status | Notes |",
        "|---|---|---|---|---|---|",
    ]
    assert lines[4] == f"| 1 | - | - | a\\|b | **INTEGRITY FAILURE**, active 2 | {'x' * 119}… |"
    assert lines[5] == ""
    assert lines[6].startswith("- INTEGRITY FAILURE: ame 1 is not the same release on every host")
    assert lines[7] == "- web-3: no history: unreachable: refused"


def test_date_and_status_come_from_the_records_whatever_the_journal_window() -> None:
    """Agents that keep ``first_activated_at`` and ``left_by`` give the same row with the whole
    journal, a truncated one or none: the log of a fleet does not depend on ``--limit``."""
    views = {
        "web-1": _view(
            _rec("1", "staged", activated_at="2026-03-09T09:00:00Z", left_by="rollback",
                 first_activated_at="2026-03-05T10:00:00+02:00"),
        ),
        "web-2": _view(_rec("1", "previous", activated_at="2026-03-07T09:00:00Z",
                            first_activated_at="2026-03-05T09:00:00Z", left_by="activate")),
    }  # fmt: skip
    full = {"web-1": _journal(("activate.done", "1", None), ("rollback.done", "0", "1"))}
    rows = [release_log(views, journals) for journals in (full, {"web-1": full["web-1"][1:]}, {})]
    assert rows[0] == rows[1] == rows[2]
    [row] = rows[0]
    assert row.date == "2026-03-05T10:00:00+02:00"  # 08:00 UTC: compared as instants, not text
    assert row.status == "rolled back 1, superseded 1"
