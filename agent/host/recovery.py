"""The recovery planner: what a killed operation left, and what to do about it. Pure.

:func:`plan_recovery` takes the state file (with its write-ahead ``pending`` intent) and a
:class:`DiskView` (what is on disk, observed under the app lock) and returns the actions that
bring the two back in line, in the order they must run. It touches no disk: the lifecycle's
executor (:mod:`agent.lifecycle.recovery`) observes, plans, applies and journals.

======================================================  ==========================================
situation                                               action
======================================================  ==========================================
journal's last line torn by a crash (already dropped)   note it
partial staging in ``incoming/``                        remove it
``releases/X`` no record names, left by a staging       remove it (never following a link)
``releases/X`` a link or file no record names           remove it (never following a link)
``releases/X`` a directory Cutover did not create       leave it (``adopt`` records it)
``current.<random>`` temp link left by a flip           remove it
entries in ``trash/``                                   finish deleting them
journal shorter than / different from the recorded head note it (the evidence stays)
installed record whose directory is gone                record it as removed
activation intent, ``current`` still old                drop the intent
activation after its flip (flipped/reverting)           flip back, post_rollback hooks, report
rollback intent, ``current`` still old                  drop the intent
rollback after its flip                                 complete it, post_rollback hooks
``current`` switched by hand to an installed release    adopt it as a rollback
``current`` missing, recorded release present           restore the link
anything else about ``current``                         refuse (DriftError): fix by hand
======================================================  ==========================================
"""

from __future__ import annotations

from dataclasses import dataclass

from cutover.agent.host.journal import GENESIS, JournalHead
from cutover.agent.host.phases import ActivationPhase
from cutover.agent.host.state import AppState, Pending

__all__ = [
    "Action",
    "AdoptHandFlip",
    "CompleteRollback",
    "DiskView",
    "DropIntent",
    "EmptyTrash",
    "ForgetRelease",
    "Note",
    "RecoveryPlan",
    "RemoveIncoming",
    "RemoveTempLink",
    "RemoveUnrecorded",
    "RestoreLink",
    "RevertActivation",
    "plan_recovery",
]


GENESIS_HEAD = JournalHead(0, GENESIS)


@dataclass(frozen=True)
class DiskView:
    """What recovery needs to know about the disk, observed once under the lock."""

    link_path: str  # <root>/current, for messages
    current: str | None  # the version ``current`` points at
    incoming: tuple[str, ...] = ()  # entries of .cutover/incoming/
    release_entries: tuple[str, ...] = ()  # every entry of releases/
    release_dirs: frozenset[str] = frozenset()  # those that are directories (not links)
    temp_links: tuple[str, ...] = ()  # current.* symlinks in the root
    trash: tuple[str, ...] = ()  # entries of .cutover/trash/
    installing: frozenset[str] = frozenset()  # versions with an install marker in incoming/
    torn_journal_line: bool = False  # the journal dropped a torn final line when opened
    journal_head: JournalHead = GENESIS_HEAD


@dataclass(frozen=True)
class Note:
    """Nothing to do but report."""

    message: str


@dataclass(frozen=True)
class RemoveIncoming:
    name: str

    @property
    def message(self) -> str:
        return f"removed partial staging {self.name} from incoming/"


@dataclass(frozen=True)
class RemoveUnrecorded:
    name: str

    @property
    def message(self) -> str:
        return f"removed unrecorded release directory releases/{self.name}"


@dataclass(frozen=True)
class RemoveTempLink:
    name: str

    @property
    def message(self) -> str:
        return f"removed stray temp symlink {self.name}"


@dataclass(frozen=True)
class EmptyTrash:
    message: str = "finished deleting releases left in trash/"


@dataclass(frozen=True)
class ForgetRelease:
    version: str

    @property
    def message(self) -> str:
        return (
            f"release {self.version} was being deleted when the agent stopped; recorded it as "
            "removed"
        )


@dataclass(frozen=True)
class DropIntent:
    """An intent whose flip never happened: nothing to undo."""

    pending: Pending
    current: str | None

    @property
    def message(self) -> str:
        p = self.pending
        what = "activation of" if p.op == "activate" else "rollback to"
        return (
            f"{what} {p.to_version} (op {p.op_id}) was interrupted before the flip; current "
            f"stays {self.current}"
        )


@dataclass(frozen=True)
class RevertActivation:
    """An activation that flipped but never committed: flip back (if still needed)."""

    pending: Pending
    flip_back: bool  # current is not on the old release yet
    had_failed: bool  # the automatic revert of a failed release was under way
    database_note: str | None = None  # the release migrated: say the database was not restored

    @property
    def message(self) -> str:
        p = self.pending
        failed = " (it had failed: marked bad)" if self.had_failed else ""
        return (
            f"activation of {p.to_version} (op {p.op_id}) was interrupted after the flip{failed}; "
            f"reverted current to {p.from_version or '(none)'}"
        )


@dataclass(frozen=True)
class CompleteRollback:
    """A rollback that flipped but never committed: rolling back is the safe direction."""

    pending: Pending

    @property
    def message(self) -> str:
        p = self.pending
        return (
            f"rollback to {p.to_version} (op {p.op_id}) was interrupted after the flip; "
            "completed it"
        )


@dataclass(frozen=True)
class AdoptHandFlip:
    """An operator flipped by hand (the documented last-resort runbook): record a rollback."""

    recorded: str | None
    on_disk: str

    @property
    def message(self) -> str:
        return (
            f"current was switched outside Cutover from {self.recorded} to {self.on_disk}; "
            "recorded it as a rollback"
        )


@dataclass(frozen=True)
class RestoreLink:
    version: str

    @property
    def message(self) -> str:
        return (
            f"the current link was missing; restored it to {self.version} (the recorded active "
            "release)"
        )


Action = (
    Note
    | RemoveIncoming
    | RemoveUnrecorded
    | RemoveTempLink
    | EmptyTrash
    | ForgetRelease
    | DropIntent
    | RevertActivation
    | CompleteRollback
    | AdoptHandFlip
    | RestoreLink
)


@dataclass(frozen=True)
class RecoveryPlan:
    """The actions in order, or a refusal: the host needs a human and nothing may run."""

    actions: tuple[Action, ...] = ()
    refusal: str | None = None


def plan_recovery(state: AppState, disk: DiskView) -> RecoveryPlan:
    """Decide how to bring ``state`` and ``disk`` back in line (see the module table)."""
    actions: list[Action] = []
    if disk.torn_journal_line:
        actions.append(Note("journal: dropped a torn final line left by a crash"))
    actions += [RemoveIncoming(n) for n in disk.incoming]
    installed = {v for v, r in state.releases.items() if r.installed}
    # Only a staging of Cutover's own (its install marker in incoming/) is removed: a directory
    # Cutover did not create (an earlier deploy tool's release) is never touched (`adopt` it).
    actions += [
        RemoveUnrecorded(n)
        for n in disk.release_entries
        if n not in installed
        and n != disk.current
        and (n in disk.installing or n not in disk.release_dirs)  # a link: removed, not followed
    ]
    actions += [RemoveTempLink(n) for n in disk.temp_links]
    if disk.trash:
        actions.append(EmptyTrash())
    head = disk.journal_head
    if head.seq < state.journal_seq or (
        head.seq == state.journal_seq and head.hash != state.journal_hash
    ):
        actions.append(
            Note(
                f"journal integrity: the journal ends at seq {head.seq}, but the state recorded "
                f"seq {state.journal_seq} when it was last saved: entries were removed or "
                "rewritten outside Cutover; inspect the journal and its backups"
            )
        )
    actions += [
        ForgetRelease(r.version)
        for r in state.releases.values()
        if r.installed and r.version != disk.current and r.version not in disk.release_dirs
    ]

    on_disk, recorded = disk.current, state.current
    pending = state.pending
    if pending is not None:
        if pending.op == "activate":
            if on_disk == pending.from_version and pending.phase == ActivationPhase.INTENT:
                actions.append(DropIntent(pending, on_disk))
            else:
                actions.append(_revert(state, pending, on_disk))
                on_disk = recorded = pending.from_version
        elif on_disk == pending.to_version:
            actions.append(CompleteRollback(pending))
            recorded = pending.to_version
        else:
            actions.append(DropIntent(pending, on_disk))

    if on_disk != recorded:
        rec = state.releases.get(on_disk or "")
        if on_disk is not None and rec is not None and rec.installed:
            actions.append(AdoptHandFlip(recorded, on_disk))
        elif on_disk is None and recorded is not None and recorded in disk.release_dirs:
            actions.append(RestoreLink(recorded))
        else:
            return RecoveryPlan(
                refusal=f"{disk.link_path} points at {on_disk or 'nothing'!r}, which is not an "
                f"installed release (the state says {recorded!r}); inspect the host, then point "
                "it at a release by hand: ln -sfn releases/VERSION current.tmp && "
                "mv -T current.tmp current"
            )
    return RecoveryPlan(tuple(actions))


def _revert(state: AppState, pending: Pending, on_disk: str | None) -> RevertActivation:
    left = state.releases.get(pending.to_version)
    note = None
    if left is not None and left.requires_migration:
        note = (
            f"{pending.to_version} may have migrated the database; it was NOT restored "
            f"(checkpoint {left.checkpoint_ref!r})"
        )
    return RevertActivation(
        pending,
        flip_back=on_disk != pending.from_version,
        had_failed=pending.phase == ActivationPhase.REVERTING,
        database_note=note,
    )
