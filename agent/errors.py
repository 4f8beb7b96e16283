"""Every error the agent (and the controller, which re-uses these) can raise.

Two roots, never mixed: *untrusted input was rejected* (nothing changed, the sender must fix the
input) and *an operation failed* (the host or a check let us down; the operator acts)::

    CutoverError
    ├── RejectedError                 untrusted input refused; no state changed
    │   ├── ManifestError             schema, duplicate JSON keys, unsafe paths in the manifest
    │   ├── PackageFormatError        outer container malformed or truncated
    │   ├── SignatureError            bad, absent or untrusted signatures; threshold not met
    │   ├── ExpiredError              manifest past expires_at
    │   ├── MismatchError             app or version differs from what was asked
    │   ├── ImmutableVersionError     same app+version, different content
    │   ├── DowngradeError            older than the highest version staged, no local override
    │   ├── UnsafeArchiveError        payload member unsafe (type, path, mode, duplicate, unlisted)
    │   ├── ArchiveLimitError         payload exceeds a cap (bytes, entries, depth, path length)
    │   ├── DigestMismatchError       payload or file size/digest differs from the manifest
    │   ├── AuthError                 request signature refused (httpsig); carries a reason code
    │   └── RequestError              a request body or parameter is malformed
    └── OperationalError              something failed while doing legitimate work
        ├── ConfigError               config file unreadable or invalid
        ├── KeyFileError              a key file missing, unreadable, or of the wrong kind
        ├── LockedError               another operation holds the app lock (conflict)
        ├── NotFoundError             no such app, release or operation
        ├── StateError                the operation makes no sense in this state (no rollback target)
        ├── DriftError                an installed release or the journal no longer matches its record
        ├── HookError                 a lifecycle hook failed or timed out
        ├── HealthCheckError          health checks did not pass
        ├── ActivationFailedError     activation failed after the flip and was reverted
        ├── StorageError              disk full, I/O error, permissions
        └── TransportError            network failure talking to a peer

Each class carries ``code`` (a short stable reason code, used by the HTTP API) and ``exit_code``
(used only by the CLI entry points, documented in docs/operations.md).
"""

from __future__ import annotations

from typing import ClassVar

__all__ = [
    "ActivationFailedError",
    "ArchiveLimitError",
    "AuthError",
    "ConfigError",
    "CutoverError",
    "DigestMismatchError",
    "DowngradeError",
    "DriftError",
    "ExitCode",
    "ExpiredError",
    "HealthCheckError",
    "HookError",
    "ImmutableVersionError",
    "KeyFileError",
    "LockedError",
    "ManifestError",
    "MismatchError",
    "NotFoundError",
    "OperationalError",
    "PackageFormatError",
    "RejectedError",
    "RequestError",
    "SignatureError",
    "StateError",
    "StorageError",
    "TransportError",
    "UnsafeArchiveError",
]


class ExitCode:
    """CLI exit codes. Stable: scripts depend on them (docs/operations.md)."""

    OK = 0
    FAILED = 1  # an operation failed (hook, health check, storage, transport)
    USAGE = 2  # bad command line or config
    REJECTED = 3  # untrusted input refused (signature, digest, unsafe package, downgrade)
    CONFLICT = 4  # another operation holds the lock
    NOT_FOUND = 5  # no such app, release or operation
    VERIFY_FAILED = 6  # drift: installed files or the journal do not match their record
    REVERTED = 7  # activation failed after the flip and was rolled back automatically
    PARTIAL = 8  # controller: some hosts succeeded, some failed


class CutoverError(Exception):
    """Base of every Cutover error."""

    code: ClassVar[str] = "error"
    exit_code: ClassVar[int] = ExitCode.FAILED

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class default

    def __str__(self) -> str:
        return self.message


class RejectedError(CutoverError):
    """Untrusted input was refused. Guarantees: nothing on the host changed."""

    code = "rejected"
    exit_code = ExitCode.REJECTED


class ManifestError(RejectedError):
    code = "bad_manifest"


class PackageFormatError(RejectedError):
    code = "bad_package"


class SignatureError(RejectedError):
    code = "bad_signature"


class ExpiredError(RejectedError):
    code = "expired"


class MismatchError(RejectedError):
    code = "mismatch"


class ImmutableVersionError(RejectedError):
    code = "version_exists"


class DowngradeError(RejectedError):
    code = "downgrade"


class UnsafeArchiveError(RejectedError):
    code = "unsafe_archive"


class ArchiveLimitError(RejectedError):
    code = "archive_limit"


class DigestMismatchError(RejectedError):
    code = "digest_mismatch"


class AuthError(RejectedError):
    """A signed request was refused. ``code`` is the short reason returned with the 401."""

    code = "unauthorized"


class RequestError(RejectedError):
    code = "bad_request"
    exit_code = ExitCode.USAGE


class OperationalError(CutoverError):
    """Legitimate work failed; the operator has to act (message says how)."""

    code = "failed"


class ConfigError(OperationalError):
    code = "bad_config"
    exit_code = ExitCode.USAGE


class KeyFileError(OperationalError):
    code = "bad_key"
    exit_code = ExitCode.USAGE


class LockedError(OperationalError):
    code = "locked"
    exit_code = ExitCode.CONFLICT

    def __init__(self, message: str, *, holder: dict[str, object] | None = None) -> None:
        super().__init__(message)
        self.holder = holder or {}


class NotFoundError(OperationalError):
    code = "not_found"
    exit_code = ExitCode.NOT_FOUND


class StateError(OperationalError):
    code = "invalid_state"


class DriftError(OperationalError):
    code = "drift"
    exit_code = ExitCode.VERIFY_FAILED


class HookError(OperationalError):
    code = "hook_failed"


class HealthCheckError(OperationalError):
    code = "health_failed"


class ActivationFailedError(OperationalError):
    code = "reverted"
    exit_code = ExitCode.REVERTED


class StorageError(OperationalError):
    code = "storage"


class TransportError(OperationalError):
    code = "transport"
