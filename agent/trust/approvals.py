"""Approvals are signatures: which roles must have signed a release, by release type (pure).

Rules (docs/governance.md, "Approvals"):

1. Each trusted release key carries roles in the agent config (``technical``, ``product``,
   ``business``, ``security``, ``management``, ...). A key without roles counts for the
   ``threshold`` only.
2. An app's approval matrix maps a ``release_type`` (and ``destructive_migration``) to the
   roles that must have signed, optionally with a count per role (``{technical = 2}``).
3. The rule for a release is the row of its type, joined with the ``destructive_migration``
   row if the manifest declares one (per role, the higher count wins).
4. Every required role slot must be covered by a **distinct** valid signature: one key never
   counts twice, even if it carries two roles. Slots are assigned by bipartite matching, so a
   key with roles ``[technical, security]`` fills whichever slot the other keys leave open.
5. A release type without a row needs only the app's ``threshold`` (the simple case).

Nothing here reads a file: the caller passes the valid signer key ids (from
:func:`agent.trust.policy.verify_signatures`) and the roles of each key.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, field_validator

from cutover.agent.errors import SignatureError
from cutover.agent.package.manifest import Manifest, ReleaseType

__all__ = [
    "DESTRUCTIVE_MIGRATION",
    "ApprovalMatrix",
    "ApprovalReport",
    "evaluate_approvals",
    "require_approvals",
    "required_roles",
]

DESTRUCTIVE_MIGRATION = "destructive_migration"
_ROLE_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"

RoleCounts = dict[str, int]


def _counts(value: list[str] | dict[str, int], where: str) -> RoleCounts:
    out: RoleCounts = {}
    items = value.items() if isinstance(value, dict) else ((r, 1) for r in value)
    for role, count in items:
        if not re.fullmatch(_ROLE_PATTERN, role):
            raise ValueError(f"{where}: role {role!r} must match [a-z][a-z0-9_-]*")
        if count < 1:
            raise ValueError(f"{where}: role {role!r} needs a count of at least 1")
        if role in out:
            raise ValueError(f"{where}: role {role!r} is listed twice")
        out[role] = count
    return out


class ApprovalMatrix(BaseModel):
    """Per app: the roles each release type needs, e.g. ``minor = ["technical", "product"]``
    or ``major = {technical = 1, product = 1, business = 1}`` (a count per role)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    major: RoleCounts | None = None
    minor: RoleCounts | None = None
    patch: RoleCounts | None = None
    hotfix: RoleCounts | None = None
    security: RoleCounts | None = None
    infrastructure: RoleCounts | None = None
    destructive_migration: RoleCounts | None = None

    @field_validator("*", mode="before")
    @classmethod
    def _rule(cls, v: object) -> object:
        if isinstance(v, list | dict):
            return _counts(v, "approval rule")
        return v

    def row(self, name: str) -> RoleCounts | None:
        value: RoleCounts | None = getattr(self, name)
        return value

    def is_empty(self) -> bool:
        return all(self.row(f) is None for f in type(self).model_fields)


@dataclass(frozen=True)
class ApprovalReport:
    """Whether the valid signatures cover the rule of a release, and what is missing."""

    rule: str  # e.g. "minor" or "major + destructive_migration"; "" when no row applies
    required: Mapping[str, int]
    signed_roles: Mapping[str, tuple[str, ...]]  # role -> key ids that carry it and signed
    missing: Mapping[str, int]  # role -> slots no distinct key filled
    signers: tuple[str, ...]

    @property
    def passed(self) -> bool:
        return not self.missing

    def to_json(self) -> dict[str, object]:
        return {
            "rule": self.rule,
            "passed": self.passed,
            "required": dict(self.required),
            "signed_roles": {r: list(k) for r, k in self.signed_roles.items()},
            "missing": dict(self.missing),
            "signers": list(self.signers),
        }

    def describe(self) -> str:
        signed = (
            ", ".join(
                f"{role} ({', '.join(k[:16] for k in keys)})"
                for role, keys in sorted(self.signed_roles.items())
            )
            or "none"
        )
        missing = ", ".join(
            f"{role}" + (f" x{n}" if n > 1 else "") for role, n in sorted(self.missing.items())
        )
        return f"roles signed: {signed}; missing: {missing or 'none'}"


def required_roles(manifest: Manifest, matrix: ApprovalMatrix) -> tuple[str, RoleCounts]:
    """The rule name and role counts that apply to ``manifest`` (empty: threshold only)."""
    parts: list[str] = []
    need: RoleCounts = {}
    rows = [ReleaseType(manifest.release_type).value]
    if manifest.destructive_migration:
        rows.append(DESTRUCTIVE_MIGRATION)
    for name in rows:
        row = matrix.row(name)
        if row is None:
            continue
        parts.append(name)
        for role, n in row.items():
            need[role] = max(need.get(role, 0), n)
    return " + ".join(parts), need


def _assign(slots: list[str], candidates: Mapping[str, frozenset[str]]) -> list[str | None]:
    """Fill each role slot with a distinct key (Kuhn's augmenting paths; sizes are tiny)."""
    owner: dict[str, int] = {}  # keyid -> slot index

    def place(slot: int, seen: set[str]) -> bool:
        for keyid in sorted(k for k, roles in candidates.items() if slots[slot] in roles):
            if keyid in seen:
                continue
            seen.add(keyid)
            if keyid not in owner or place(owner[keyid], seen):
                owner[keyid] = slot
                return True
        return False

    for i in range(len(slots)):
        place(i, set())
    filled: list[str | None] = [None] * len(slots)
    for keyid, slot in owner.items():
        filled[slot] = keyid
    return filled


def evaluate_approvals(
    manifest: Manifest,
    signers: tuple[str, ...],
    key_roles: Mapping[str, frozenset[str]],
    matrix: ApprovalMatrix,
) -> ApprovalReport:
    """Check the valid ``signers`` against the rule of ``manifest`` (never raises).

    Args:
        manifest: the parsed, signature-checked manifest.
        signers: key ids whose signature over the manifest bytes is valid.
        key_roles: the roles of each trusted key id (missing: no roles).
        matrix: the app's approval matrix.
    """
    rule, need = required_roles(manifest, matrix)
    candidates = {k: key_roles.get(k, frozenset()) for k in signers}
    signed: dict[str, tuple[str, ...]] = {}
    for keyid in sorted(signers):
        for role in sorted(candidates[keyid]):
            signed[role] = (*signed.get(role, ()), keyid)
    slots = [role for role, n in sorted(need.items()) for _ in range(n)]
    filled = _assign(slots, candidates)
    missing: RoleCounts = {}
    for role, holder in zip(slots, filled, strict=True):
        if holder is None:
            missing[role] = missing.get(role, 0) + 1
    return ApprovalReport(rule, need, signed, missing, tuple(sorted(signers)))


def require_approvals(
    manifest: Manifest,
    signers: tuple[str, ...],
    key_roles: Mapping[str, frozenset[str]],
    matrix: ApprovalMatrix,
) -> ApprovalReport:
    """:func:`evaluate_approvals`, raising when a required role is not covered.

    Raises:
        SignatureError: code ``approvals``; the message lists the roles signed (with key ids),
            the roles missing, and what to do.
    """
    report = evaluate_approvals(manifest, signers, key_roles, matrix)
    if not report.passed:
        need = ", ".join(
            f"{role}" + (f" x{n}" if n > 1 else "") for role, n in sorted(report.required.items())
        )
        raise SignatureError(
            f"{manifest.app} {manifest.version} ({report.rule}) needs signatures by {need}, each "
            f"by a distinct key; {report.describe()}. Have a key holding each missing role sign "
            "it (`cutover sign`); `cutover inspect --trust KEY.pub=ROLE --matrix FILE` shows "
            "what passes",
            code="approvals",
        )
    return report
