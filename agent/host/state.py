"""The state file of one app (``.cutover/state.json``): the single source of truth.

Rollback, retention and recovery read this file, never directory listings or mtimes. It is
rewritten atomically (temp file, fsync, rename, fsync dir) and records the journal head so the
journal's tail cannot be cut unnoticed.

Release states::

    staged   installed and verified; may be activated
    active   ``current`` points at it (exactly one, or none before the first activation)
    previous the release that was active before ``active``: the default rollback target
    bad      activation failed after the flip because of the release's own hooks or checks
             (reverted); never chosen by a rollback, not activated again until ``clear-bad``
    failed   staging failed (nothing is installed, the record stays for the audit trail), or an
             activation failed because of the host (a host-local hook, an unreachable
             dependency): still installed, may be activated again

``pending`` is the write-ahead intent of an operation that changes ``current``: recovery reads it
to finish or revert that operation after a crash (its ``phase``: :mod:`agent.host.phases`).

``activations`` (``history`` in the file) lists versions in activation order, newest last; the
default rollback target is found by walking it back from ``current``.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutover.agent._util.fsutil import atomic_write
from cutover.agent.errors import StorageError
from cutover.agent.host.phases import ActivationPhase

__all__ = [
    "NOTES_CAP",
    "RESULTS_CAP",
    "AppState",
    "Pending",
    "ReleaseRecord",
    "ReleaseStatus",
    "StateFile",
    "normalise",
    "record_rollback",
    "utcnow",
]


RESULTS_CAP = 50  # hook and health results kept per release (each with bounded output tails)
NOTES_CAP = 4000  # characters of the manifest's notes kept on the record


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class ReleaseStatus(StrEnum):
    STAGED = "staged"
    ACTIVE = "active"
    PREVIOUS = "previous"
    BAD = "bad"
    FAILED = "failed"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReleaseRecord(_Model):
    version: str
    status: ReleaseStatus
    seq: int  # staging order, for retention ("newest N") without mtimes
    manifest_digest: str
    runtime_digest: str = ""  # of manifests/<v>.runtime.json (hooks, health, shared)
    signers: list[str] = []
    release_type: str = ""
    build: str = ""  # provenance from the signed manifest
    commit: str = ""
    branch: str = ""
    notes: str = ""  # bounded (NOTES_CAP)
    summary: str = ""  # manifest release_notes.summary, bounded (NOTES_CAP): the release log
    payload_digest: str = (
        ""  # manifest payload.sha256: which files (the manifest digest: which release)
    )
    requires_migration: bool = False
    owner: str = ""  # manifest owner (governance)
    db_rollback: str = ""  # manifest rollback.database: safe | unsafe | needs-confirmation
    staged_at: str = ""
    staged_by: str = ""
    activated_at: str | None = None  # the latest activation (or rollback onto it)
    activated_by: str | None = None
    first_activated_at: str | None = None  # never overwritten: the release log's Date
    left_by: str = ""  # how ``current`` last left this release: "activate" | "rollback"
    pinned: bool = False
    # recorded by ``adopt`` from an earlier deploy tool (Capistrano, Deployer): unsigned, no
    # manifest, never activated or pruned by Cutover, only a rollback target
    adopted: bool = False
    installed: bool = True
    reason: str = ""  # why bad/failed
    checkpoint_ref: str | None = None
    hooks: list[dict[str, Any]] = []  # every phase's hook results, oldest first (bounded tails)
    health: list[dict[str, Any]] = []  # every health phase's result, oldest first
    # where the staged files came from: payload_files/_bytes, and per reuse method
    # (reflink, hardlink, copy) <method>_files/_bytes (agent/extract/reuse.py)
    content: dict[str, int] = {}
    # SHA-256 of the seal's (path, sha256, size, mode) rows when it was written (agent/host/seal.py,
    # seal_projection): a seal whose rows differ is never believed. None: no seal was written.
    seal_sha256: str | None = None

    def add_results(
        self, hooks: list[dict[str, Any]], health: list[dict[str, Any]] | None = None
    ) -> None:
        """Append one phase's hook and health results, keeping the newest RESULTS_CAP of each."""
        self.hooks = [*self.hooks, *hooks][-RESULTS_CAP:]
        self.health = [*self.health, *(health or [])][-RESULTS_CAP:]


class Pending(_Model):
    op: Literal["activate", "rollback"]
    op_id: str
    from_version: str | None
    to_version: str
    phase: ActivationPhase = ActivationPhase.INTENT  # a rollback's stays at intent
    started_at: str = Field(default_factory=utcnow)
    actor: str = ""


class AppState(_Model):
    # ``history`` on disk, a name kept for existing state files; ``activations`` in code, so it
    # is not confused with the trust policy's HostHistory (known digests, highest version).
    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    format: Literal[1] = 1
    app: str
    current: str | None = None
    previous: str | None = None
    releases: dict[str, ReleaseRecord] = {}
    activations: list[str] = Field(default=[], alias="history")  # activation order, newest last
    known_digests: dict[str, str] = {}  # every version ever accepted: immutability
    highest_version: str | None = None
    next_seq: int = 1
    pending: Pending | None = None
    journal_seq: int = 0
    journal_hash: str = "0" * 64

    def installed(self) -> list[ReleaseRecord]:
        """Installed releases, newest staged first."""
        return sorted(
            (r for r in self.releases.values() if r.installed), key=lambda r: r.seq, reverse=True
        )

    def rollback_target(self) -> str | None:
        """The previous good release: walk the activation history back from current."""
        for version in reversed(self.activations):
            rec = self.releases.get(version)
            if (
                version != self.current
                and rec is not None
                and rec.installed
                and rec.status not in (ReleaseStatus.BAD, ReleaseStatus.FAILED)
            ):
                return version
        return None


class StateFile:
    def __init__(self, path: Path, app: str) -> None:
        self.path = path
        self.app = app

    def load(self) -> AppState:
        """Read the state (a fresh state if none exists yet).

        Raises:
            StorageError: the file exists but is unreadable or invalid (never silently reset).
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return AppState(app=self.app)
        except OSError as exc:
            raise StorageError(f"cannot read state {self.path}: {exc.strerror}") from exc
        try:
            state = AppState.model_validate_json(data)
        except ValidationError as exc:
            raise StorageError(
                f"state file {self.path} is invalid ({exc.error_count()} problems, first: "
                f"{exc.errors()[0]['msg']}); restore it from backup or inspect it by hand — the "
                "agent never resets state silently"
            ) from exc
        if state.app != self.app:
            raise StorageError(
                f"state file {self.path} belongs to app {state.app!r}, not {self.app!r}"
            )
        return state

    def save(self, state: AppState) -> None:
        data = (
            json.dumps(
                state.model_dump(mode="json", by_alias=True), indent=1, sort_keys=True
            ).encode()
            + b"\n"
        )
        try:
            atomic_write(self.path, data, 0o640)
        except OSError as exc:
            raise StorageError(
                f"cannot write state {self.path}: {exc.strerror}; free disk space and retry"
            ) from exc


def normalise(state: AppState) -> None:
    """Derive every record's status from current/previous (the only inputs), in one place."""
    state.activations = [
        v for v in state.activations if (r := state.releases.get(v)) is not None and r.installed
    ]
    state.previous = state.rollback_target()
    for rec in state.releases.values():
        if rec.status in (ReleaseStatus.BAD, ReleaseStatus.FAILED) or not rec.installed:
            continue
        if rec.version == state.current:
            rec.status = ReleaseStatus.ACTIVE
        elif rec.version == state.previous:
            rec.status = ReleaseStatus.PREVIOUS
        else:
            rec.status = ReleaseStatus.STAGED


def record_rollback(state: AppState, target: str, actor: str, *, stamp: bool = True) -> None:
    """Record that ``current`` went back to ``target``: the activations after it are unwound
    (or it is appended, if it was never activated through Cutover) and the intent is cleared.

    ``stamp`` records ``actor`` as its activator if it never had one (not for a hand flip).
    """
    left = state.releases.get(state.current or "")
    if left is not None and state.current != target:
        left.left_by = "rollback"
    state.current = target
    rec = state.releases.get(target)
    if stamp and rec is not None and rec.activated_at is None:
        rec.activated_at, rec.activated_by = utcnow(), actor
    if rec is not None and rec.activated_at is not None and rec.first_activated_at is None:
        rec.first_activated_at = rec.activated_at
    if target in state.activations:
        while state.activations and state.activations[-1] != target:
            state.activations.pop()
    else:
        state.activations.append(target)
    state.pending = None
