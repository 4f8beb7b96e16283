"""Pure release verification: is this manifest trustworthy, and may this host accept it?

Rules (docs/security-model.md). No I/O happens here; every failure raises a
:class:`~agent.errors.RejectedError` subclass and nothing is returned half-checked.

1. Signatures are checked over the *exact bytes* of ``manifest.json`` before those bytes are parsed
   into a model: only keys trusted for the app count, each key counts once, and at least
   ``threshold`` distinct trusted keys must have signed. A malformed signature entry is an error,
   an untrusted key id is ignored (it may be a rotation in progress) but reported.
2. The manifest must parse under the strict schema (agent.package.manifest).
3. App and version must equal what the operator or controller asked for.
4. A manifest past ``expires_at`` is refused.
5. Immutability: a version already known with a different manifest digest is refused.
6. Downgrade: a version older than the highest ever staged is refused unless the host allows it
   locally. Re-accepting the identical manifest of a known version is not a downgrade.
7. Governance (docs/governance.md): the signed ``branch`` must match the app's
   ``allowed_branches`` (agent.trust.rules); the valid signatures must cover the approval
   matrix's rule for the release type (agent.trust.approvals); with ``versioning = "semver"``
   the release type must match the bump over the highest version (agent.trust.rules); the
   fields the host requires for the release type are declared (agent.trust.requirements).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Final

import pydantic_core

from cutover.agent.errors import (
    DowngradeError,
    ExpiredError,
    ImmutableVersionError,
    ManifestError,
    MismatchError,
    SignatureError,
)
from cutover.agent.keys import PublicKey
from cutover.agent.package.manifest import (
    MAX_MANIFEST_BYTES,
    Manifest,
    parse_manifest,
    strict_json_loads,
)
from cutover.agent.package.signatures import SignatureEntry, parse_signatures
from cutover.agent.trust.approvals import ApprovalMatrix, ApprovalReport, require_approvals
from cutover.agent.trust.requirements import Requirements, check_requirements
from cutover.agent.trust.rules import Versioning, check_branch, check_release_type
from cutover.agent.versions import Incomparable, is_older

__all__ = [
    "HostHistory",
    "SignatureVerdict",
    "TrustPolicy",
    "VerifiedRelease",
    "check_history",
    "manifest_digest",
    "peek_app",
    "signature_verdict",
    "verify_release",
    "verify_signatures",
]


@dataclass(frozen=True)
class TrustPolicy:
    """The release keys one app trusts, how many must sign, and the app's governance rules."""

    app: str
    keys: Mapping[str, PublicKey]
    threshold: int = 1
    key_roles: Mapping[str, frozenset[str]] = field(default_factory=dict)
    approvals: ApprovalMatrix = field(default_factory=ApprovalMatrix)
    versioning: Versioning = "any"
    allowed_branches: tuple[str, ...] | None = None
    requirements: Requirements = field(default_factory=Requirements)

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError("threshold must be at least 1")


@dataclass(frozen=True)
class HostHistory:
    """What the host remembers about an app, for immutability and downgrade checks."""

    known_digests: Mapping[str, str] = field(default_factory=dict)
    highest_version: str | None = None
    allow_downgrade: bool = False


@dataclass(frozen=True)
class VerifiedRelease:
    manifest: Manifest
    manifest_bytes: bytes
    digest: str
    signers: tuple[str, ...]
    ignored_keyids: tuple[str, ...]
    already_known: bool
    approvals: ApprovalReport | None = None


def manifest_digest(manifest_bytes: bytes) -> str:
    return hashlib.sha256(manifest_bytes).hexdigest()


class SignatureVerdict(StrEnum):
    """What one ``signatures.json`` entry proves about the manifest bytes."""

    VALID = "valid"  # a given key's signature over exactly these bytes
    INVALID = "invalid"  # a given key, but the signature does not match these bytes
    MALFORMED = "malformed"  # not standard base64
    UNTRUSTED = "untrusted"  # made by none of the given keys: not checked


def signature_verdict(
    manifest_bytes: bytes, entry: SignatureEntry, keys: Mapping[str, PublicKey]
) -> SignatureVerdict:
    """Check one signature entry over ``manifest_bytes`` against ``keys`` (by key id).

    The one Ed25519 check of manifests: :func:`verify_signatures` (staging) and
    ``cutover inspect --trust`` both decide through it.
    """
    try:
        raw = entry.signature()
    except ValueError:
        return SignatureVerdict.MALFORMED
    key = keys.get(entry.keyid)
    if key is None:
        return SignatureVerdict.UNTRUSTED
    if len(raw) != 64 or not key.verify(raw, manifest_bytes):
        return SignatureVerdict.INVALID
    return SignatureVerdict.VALID


def verify_signatures(
    manifest_bytes: bytes, signatures: list[SignatureEntry], policy: TrustPolicy
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Check signatures over ``manifest_bytes``.

    Returns:
        (trusted signer key ids, ignored untrusted key ids), both sorted.

    Raises:
        SignatureError: unsigned, a signature is not base64, a trusted key's signature is
            invalid, or threshold not met.
    """
    if not signatures:
        raise SignatureError(
            f"package for app {policy.app!r} is not signed; sign it with `cutover sign`",
            code="unsigned",
        )
    good: set[str] = set()
    ignored: set[str] = set()
    for entry in signatures:
        verdict = signature_verdict(manifest_bytes, entry, policy.keys)
        if verdict is SignatureVerdict.MALFORMED:
            raise SignatureError(
                f"signature by key {entry.keyid[:16]} is not valid base64", code="bad_signature"
            )
        if verdict is SignatureVerdict.UNTRUSTED:
            ignored.add(entry.keyid)
            continue
        if verdict is SignatureVerdict.INVALID:
            key = policy.keys[entry.keyid]
            raise SignatureError(
                f"signature by trusted key {entry.keyid[:16]} ({key.source or 'config'}) does not "
                "match manifest.json: the manifest was altered or signed with another key",
                code="bad_signature",
            )
        good.add(entry.keyid)
    if len(good) < policy.threshold:
        detail = f"{len(good)} of the required {policy.threshold} trusted signatures" + (
            f"; untrusted key ids ignored: {', '.join(k[:16] for k in sorted(ignored))}"
            if ignored
            else ""
        )
        raise SignatureError(
            f"app {policy.app!r}: package carries {detail}. Have more trusted release keys sign "
            "it, or check the host's trusted keys (`cutover-agent keys`)",
            code="untrusted" if not good else "threshold",
        )
    return tuple(sorted(good)), tuple(sorted(ignored))


def check_history(manifest: Manifest, digest: str, history: HostHistory) -> bool:
    """Immutability and downgrade checks. Returns True if this exact manifest is already known."""
    known = history.known_digests.get(manifest.version)
    if known is not None:
        if known != digest:
            raise ImmutableVersionError(
                f"{manifest.app} {manifest.version} is already known on this host with different "
                f"content (manifest sha256 {known[:16]} vs {digest[:16]}); versions are immutable: "
                "build a new version"
            )
        return True
    if history.highest_version is not None and not history.allow_downgrade:
        try:
            older = is_older(manifest.version, history.highest_version)
        except Incomparable as exc:
            raise DowngradeError(
                f"{manifest.app} {manifest.version}: {exc}; allow it locally with --allow-downgrade"
            ) from exc
        if older:
            raise DowngradeError(
                f"{manifest.app} {manifest.version} is older than {history.highest_version}, the "
                "highest version staged here; roll back with `rollback --to` instead, or stage it "
                "on the host with --allow-downgrade"
            )
    return False


def verify_release(
    manifest_bytes: bytes,
    signatures_bytes: bytes,
    policy: TrustPolicy,
    *,
    expected_version: str | None,
    history: HostHistory,
    now: datetime,
    earlier: VerifiedRelease | None = None,
) -> VerifiedRelease:
    """Run every check in the module docstring, in order.

    Args:
        manifest_bytes: the exact ``manifest.json`` bytes from the package.
        signatures_bytes: the ``signatures.json`` bytes.
        policy: the trust policy of the app the caller expects (selects the keys).
        expected_version: the version asked for, or None to take the manifest's (local CLI).
        history: the host's memory of this app.
        now: the current time (aware).
        earlier: a decision this process took before on a package (a stage worker that
            streamed the upload it now stages): its parse of the manifest is reused if, and only
            if, its manifest bytes are these bytes (parsing is a function of the bytes alone,
            and the model is frozen); every other check runs again, signatures included.

    Raises:
        RejectedError: a subclass naming the failed rule.
    """
    signers, ignored = verify_signatures(manifest_bytes, parse_signatures(signatures_bytes), policy)
    if earlier is not None and earlier.manifest_bytes == manifest_bytes:
        manifest = earlier.manifest
    else:
        manifest = parse_manifest(manifest_bytes)
    if manifest.app != policy.app:
        raise MismatchError(
            f"package is for app {manifest.app!r}, not {policy.app!r}", code="app_mismatch"
        )
    if expected_version is not None and manifest.version != expected_version:
        raise MismatchError(
            f"package is version {manifest.version!r}, but {expected_version!r} was requested",
            code="version_mismatch",
        )
    if manifest.expires_at is not None and now >= manifest.expires_at:
        raise ExpiredError(
            f"{manifest.app} {manifest.version}: manifest expired at "
            f"{manifest.expires_at.isoformat()}; rebuild and re-sign the release"
        )
    check_branch(manifest, policy.allowed_branches)
    check_requirements(manifest, policy.requirements)
    report = require_approvals(manifest, signers, policy.key_roles, policy.approvals)
    digest = manifest_digest(manifest_bytes)
    known = check_history(manifest, digest, history)
    if not known:
        check_release_type(manifest, history.highest_version, policy.versioning)
    return VerifiedRelease(manifest, manifest_bytes, digest, signers, ignored, known, report)


_UNREAD: Final = object()  # peek_app: the fast parser did not read the bytes


def peek_app(manifest_bytes: bytes) -> str:
    """The ``app`` a manifest claims, to choose a trust policy. Not a trust decision.

    Read with pydantic-core's JSON parser (in Rust, ~3x faster than the strict parse, which
    :func:`verify_release` runs next anyway): the strict rules (duplicate keys, NaN, BOM) are
    judged there, before anything is trusted. Bytes that parser refuses go through the strict
    parse here, for its message.
    """
    obj: object = _UNREAD
    if len(manifest_bytes) <= MAX_MANIFEST_BYTES and not manifest_bytes.startswith(b"\xef"):
        with contextlib.suppress(ValueError):
            obj = pydantic_core.from_json(manifest_bytes)
    if obj is _UNREAD:
        obj = strict_json_loads(manifest_bytes, "manifest.json", MAX_MANIFEST_BYTES)
    app = obj.get("app") if isinstance(obj, dict) else None
    if not isinstance(app, str):
        raise ManifestError("manifest.json has no app name")
    return app
