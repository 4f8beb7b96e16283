"""The recovery planner as a table: (state with its pending intent, what is on disk) → actions.

Pure: real state models, no disk. Each case names a crash point or a situation from the table
in agent/host/recovery.py (and docs/operations.md §8); the executor that applies these plans
is exercised end to end by test_crash_recovery.py (kill -9 at every named step).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from cutover.agent.host.journal import JournalHead
from cutover.agent.host.phases import ActivationPhase
from cutover.agent.host.recovery import (
    Action,
    AdoptHandFlip,
    CompleteRollback,
    DiskView,
    DropIntent,
    EmptyTrash,
    ForgetRelease,
    Note,
    RemoveIncoming,
    RemoveTempLink,
    RemoveUnrecorded,
    RestoreLink,
    RevertActivation,
    plan_recovery,
)
from cutover.agent.host.state import AppState, Pending, ReleaseRecord, ReleaseStatus

OLD, NEW = "1.0.0", "1.1.0"
LINK = "/srv/demo/current"
HEAD = JournalHead(7, "a" * 64)


def _state(
    current: str | None = OLD,
    installed: tuple[str, ...] = (OLD, NEW),
    pending: Pending | None = None,
    migrating: tuple[str, ...] = (),
    head: JournalHead = HEAD,
) -> AppState:
    releases = {
        v: ReleaseRecord(
            version=v,
            status=ReleaseStatus.STAGED,
            seq=i,
            manifest_digest="0" * 64,
            requires_migration=v in migrating,
            checkpoint_ref="dump-1" if v in migrating else None,
        )
        for i, v in enumerate(installed, 1)
    }
    return AppState(
        app="demo",
        current=current,
        releases=releases,
        pending=pending,
        journal_seq=head.seq,
        journal_hash=head.hash,
        activations=[current] if current else [],
    )


def _disk(
    current: str | None = OLD,
    dirs: tuple[str, ...] = (OLD, NEW),
    entries: tuple[str, ...] | None = None,
    head: JournalHead = HEAD,
    incoming: tuple[str, ...] = (),
    temp_links: tuple[str, ...] = (),
    trash: tuple[str, ...] = (),
    torn_journal_line: bool = False,
    installing: set[str] | None = None,
) -> DiskView:
    """What observe() would report; ``entries`` (default: ``dirs``) is everything in releases/."""
    return DiskView(
        link_path=LINK,
        current=current,
        incoming=incoming,
        release_entries=tuple(sorted(dirs if entries is None else entries)),
        release_dirs=frozenset(dirs),
        temp_links=temp_links,
        trash=trash,
        torn_journal_line=torn_journal_line,
        journal_head=head,
        installing=frozenset(installing or ()),
    )


def _pending(
    op: str = "activate", phase: ActivationPhase = ActivationPhase.INTENT, frm: str | None = OLD
) -> Pending:
    to = NEW if op == "activate" else OLD
    frm = frm if op == "activate" else NEW
    return Pending.model_validate(
        {"op": op, "op_id": "op1", "from_version": frm, "to_version": to, "phase": phase}
    )


def _integrity(seq: int) -> Note:
    return Note(
        f"journal integrity: the journal ends at seq {seq}, but the state recorded seq 7 when "
        "it was last saved: entries were removed or rewritten outside Cutover; inspect the "
        "journal and its backups"
    )


@dataclass
class Case:
    state: AppState
    disk: DiskView
    actions: list[Action] = field(default_factory=list)
    refusal: str | None = None  # a substring of the refusal


ACT_INTENT = _pending()
ACT_FLIPPED = _pending(phase=ActivationPhase.FLIPPED)
ACT_REVERTING = _pending(phase=ActivationPhase.REVERTING)
FIRST_DEPLOY = _pending(phase=ActivationPhase.FLIPPED, frm=None)
RB_INTENT = _pending("rollback")

CASES: dict[str, Case] = {
    "clean-host-nothing-to-do": Case(_state(), _disk()),
    "torn-journal-line-is-reported": Case(
        _state(),
        _disk(torn_journal_line=True),
        [Note("journal: dropped a torn final line left by a crash")],
    ),
    "partial-staging-in-incoming-is-removed": Case(
        _state(), _disk(incoming=("1.2.0.ab12",)), [RemoveIncoming("1.2.0.ab12")]
    ),
    "unrecorded-release-dir-left-by-a-staging-is-removed": Case(
        _state(),
        _disk(dirs=(OLD, NEW, "1.2.0"), incoming=("1.2.0.installing",), installing={"1.2.0"}),
        [RemoveIncoming("1.2.0.installing"), RemoveUnrecorded("1.2.0")],
    ),
    # issue 9 item 1: a Capistrano/Deployer release is not Cutover's to delete
    "release-dir-cutover-did-not-create-is-left-alone": Case(
        _state(), _disk(dirs=(OLD, NEW, "20260301120000"))
    ),
    "planted-link-in-releases-is-removed": Case(
        _state(), _disk(entries=(OLD, NEW, "9.9.9")), [RemoveUnrecorded("9.9.9")]
    ),
    "stray-temp-link-is-removed": Case(
        _state(), _disk(temp_links=("current.x1",)), [RemoveTempLink("current.x1")]
    ),
    "trash-left-by-a-crash-is-emptied": Case(_state(), _disk(trash=("1.0.0.z",)), [EmptyTrash()]),
    "journal-cut-is-noted": Case(_state(), _disk(head=JournalHead(5, "b" * 64)), [_integrity(5)]),
    "journal-rewritten-is-noted": Case(
        _state(), _disk(head=JournalHead(7, "c" * 64)), [_integrity(7)]
    ),
    "journal-grown-by-another-process-is-fine": Case(
        _state(), _disk(head=JournalHead(9, "d" * 64))
    ),
    "release-dir-gone-mid-delete-is-recorded-removed": Case(
        _state(), _disk(dirs=(OLD,)), [ForgetRelease(NEW)]
    ),
    "activation-intent-before-flip-is-dropped": Case(
        _state(pending=ACT_INTENT), _disk(), [DropIntent(ACT_INTENT, OLD)]
    ),
    "activation-flipped-before-phase-saved-is-reverted": Case(
        _state(pending=ACT_INTENT),
        _disk(current=NEW),
        [RevertActivation(ACT_INTENT, flip_back=True, had_failed=False)],
    ),
    "activation-after-flip-is-reverted": Case(
        _state(pending=ACT_FLIPPED),
        _disk(current=NEW),
        [RevertActivation(ACT_FLIPPED, flip_back=True, had_failed=False)],
    ),
    "revert-interrupted-after-its-flip-back-is-finished": Case(
        _state(pending=ACT_REVERTING),
        _disk(current=OLD),
        [RevertActivation(ACT_REVERTING, flip_back=False, had_failed=True)],
    ),
    "revert-interrupted-before-its-flip-back-flips": Case(
        _state(pending=ACT_REVERTING),
        _disk(current=NEW),
        [RevertActivation(ACT_REVERTING, flip_back=True, had_failed=True)],
    ),
    "first-deploy-after-flip-removes-current": Case(
        _state(current=None, pending=FIRST_DEPLOY),
        _disk(current=NEW),
        [RevertActivation(FIRST_DEPLOY, flip_back=True, had_failed=False)],
    ),
    "reverted-migration-says-database-not-restored": Case(
        _state(pending=ACT_FLIPPED, migrating=(NEW,)),
        _disk(current=NEW),
        [
            RevertActivation(
                ACT_FLIPPED,
                flip_back=True,
                had_failed=False,
                database_note=f"{NEW} may have migrated the database; it was NOT restored "
                "(checkpoint 'dump-1')",
            )
        ],
    ),
    "rollback-intent-before-flip-is-dropped": Case(
        _state(current=NEW, pending=RB_INTENT),
        _disk(current=NEW),
        [DropIntent(RB_INTENT, NEW)],
    ),
    "rollback-after-flip-is-completed": Case(
        _state(current=NEW, pending=RB_INTENT),
        _disk(current=OLD),
        [CompleteRollback(RB_INTENT)],
    ),
    "hand-flip-to-installed-release-is-adopted": Case(
        _state(current=NEW), _disk(current=OLD), [AdoptHandFlip(NEW, OLD)]
    ),
    "missing-current-link-is-restored": Case(_state(), _disk(current=None), [RestoreLink(OLD)]),
    "missing-link-and-missing-release-is-refused": Case(
        _state(), _disk(current=None, dirs=(NEW,)), refusal="points at 'nothing'"
    ),
    "current-on-unrecorded-dir-is-refused": Case(
        _state(), _disk(current="9.9.9", dirs=(OLD, NEW, "9.9.9")), refusal="'9.9.9'"
    ),
    "leftovers-are-cleaned-before-the-intent-is-resolved": Case(
        _state(pending=ACT_FLIPPED),
        _disk(current=NEW, incoming=("x",), temp_links=("current.y",), trash=("z",)),
        [
            RemoveIncoming("x"),
            RemoveTempLink("current.y"),
            EmptyTrash(),
            RevertActivation(ACT_FLIPPED, flip_back=True, had_failed=False),
        ],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_recovery_plan(case: Case) -> None:
    before = case.state.model_copy(deep=True)
    plan = plan_recovery(case.state, case.disk)
    assert case.state == before  # planning changes nothing, not even the state in memory
    if case.refusal is not None:
        assert plan.actions == () and plan.refusal is not None
        assert case.refusal in plan.refusal and LINK in plan.refusal
        return
    assert plan.refusal is None
    assert list(plan.actions) == case.actions


def test_every_action_says_what_it_did() -> None:
    """Each action's message is what the journal's ``recovery`` entry and the CLI report."""
    assert all(a.message for c in CASES.values() for a in c.actions)
    assert RevertActivation(ACT_REVERTING, flip_back=False, had_failed=True).message == (
        f"activation of {NEW} (op op1) was interrupted after the flip (it had failed: marked "
        f"bad); reverted current to {OLD}"
    )
    assert DropIntent(RB_INTENT, NEW).message == (
        f"rollback to {OLD} (op op1) was interrupted before the flip; current stays {NEW}"
    )
    assert RevertActivation(FIRST_DEPLOY, True, False).message.endswith("current to (none)")
