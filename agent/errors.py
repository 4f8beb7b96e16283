"""Every error the agent (and the controller, which re-uses these) can raise, and their registry.

Two roots, never mixed: *untrusted input was rejected* (nothing changed, the sender must fix the
input) and *an operation failed* (the host, a check or a peer let us down; the operator acts)::

    CutoverError                         error                    500  1
    ├── RejectedError                    rejected                 422  3  untrusted input refused; no state changed
    │   ├── ManifestError                bad_manifest             422  3  schema, duplicate JSON keys, unsafe paths
    │   ├── PackageFormatError           bad_package              422  3  outer container malformed or truncated
    │   ├── SignatureError               bad_signature            422  3  bad, absent or untrusted signatures; threshold
    │   ├── ExpiredError                 expired                  422  3  manifest past expires_at
    │   ├── MismatchError                mismatch                 422  3  app or version differs from what was asked
    │   ├── ImmutableVersionError        version_exists           422  3  same app+version, different content
    │   ├── DowngradeError               downgrade                422  3  older than the highest version, no override
    │   ├── UnsafeArchiveError           unsafe_archive           422  3  payload member unsafe (type, path, mode, ...)
    │   ├── ArchiveLimitError            archive_limit            422  3  payload exceeds a cap (bytes, entries, ...)
    │   ├── DigestMismatchError          digest_mismatch          422  3  payload or file size/digest differs
    │   ├── AuthError                    unauthorized             401  3  request signature refused (reason: docs/protocol.md)
    │   └── RequestError                 bad_request              400  2  a request body or parameter is malformed
    │       ├── MethodNotAllowedError    method_not_allowed       405  2
    │       ├── BodyTimeoutError         body_timeout             408  2  the body stalled or took too long
    │       ├── PayloadTooLargeError     payload_too_large        413  2
    │       ├── UnsupportedMediaTypeError unsupported_media_type  415  2
    │       ├── ExpectationFailedError   expectation_failed       417  2  an Expect other than 100-continue
    │       └── UploadOffsetError        upload_offset            409  2  a resumed upload's offset is not what is held
    └── OperationalError                 failed                   500  1  something failed while doing legitimate work
        ├── ConfigError                  bad_config               500  2  config file unreadable or invalid
        ├── KeyFileError                 bad_key                  500  2  a key file missing, unreadable, wrong kind
        ├── LockedError                  locked                   409  4  another operation holds the app (``holder``)
        ├── NotFoundError                not_found                404  5  no such app, release, operation or endpoint
        ├── StateError                   invalid_state            409  1  makes no sense in this state (no rollback target)
        ├── FrozenError                  frozen                   409  1  activation inside a freeze window, no override
        ├── DriftError                   drift                    500  6  a release or the journal no longer matches
        ├── HookFailedError              hook_failed              500  1  a lifecycle hook failed or timed out
        ├── HealthCheckError             health_failed            500  1  health checks did not pass
        ├── ActivationFailedError        reverted                 500  7  failed after the flip and was reverted
        ├── StorageError                 storage                  500  1  disk full, I/O error, permissions
        ├── UnavailableError             unavailable              503  1  the agent is shutting down; retry later
        ├── CancelledOperationError      cancelled                503  1  the agent stopped before the operation ended
        ├── InternalError                internal                 500  1  a bug; the agent log has the traceback
        ├── PartialFailureError          partial                  500  8  controller: some hosts succeeded, some failed
        └── TransportError               transport                502  1  network failure talking to a peer
            └── UnreachableError         unreachable              502  9  no connection to the peer at all

The columns are the **registry** (:data:`REGISTRY`): one entry per class, built by the
:func:`_registered` decorator on each class, never by hand elsewhere. Code and class are a
bijection (checked at import and by tests/agent/test_errors.py). The HTTP status is the one the
agent answers with (docs/protocol.md, "Errors"); the exit code is the one the CLI entry points
exit with (docs/operations.md, "Exit codes").

An instance may refine its class's code with a finer **reason** (``AuthError(..., code="replayed")``,
``DigestMismatchError(..., code="payload_digest")``): ``exc.code`` is that reason, ``exc.kind`` is
always the registry code of its class. On the wire an error is ``{"error": exc.code, "kind":
exc.kind, "message": ...}``; :func:`from_wire` turns such a body back into the same class with
the same code, so a caller across the wire branches exactly as a local caller would.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, TypeVar

__all__ = [
    "REGISTRY",
    "ActivationFailedError",
    "ArchiveLimitError",
    "AuthError",
    "BodyTimeoutError",
    "CancelledOperationError",
    "ConfigError",
    "CutoverError",
    "DigestMismatchError",
    "DowngradeError",
    "DriftError",
    "ErrorKind",
    "ExitCode",
    "ExpectationFailedError",
    "ExpiredError",
    "FrozenError",
    "HealthCheckError",
    "HookError",
    "HookFailedError",
    "ImmutableVersionError",
    "InternalError",
    "KeyFileError",
    "LockedError",
    "ManifestError",
    "MethodNotAllowedError",
    "MismatchError",
    "NotFoundError",
    "OperationalError",
    "PackageFormatError",
    "PartialFailureError",
    "PayloadTooLargeError",
    "RejectedError",
    "RequestError",
    "SignatureError",
    "StateError",
    "StorageError",
    "TransportError",
    "UnavailableError",
    "UnreachableError",
    "UnsafeArchiveError",
    "UnsupportedMediaTypeError",
    "UploadOffsetError",
    "class_for_status",
    "error_class",
    "from_wire",
    "kind_of",
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
    PARTIAL = 8  # controller, fleet operation: succeeded on some hosts, failed on others
    UNREACHABLE = 9  # controller, fleet operation: no selected host answered (docs/controller.md)


@dataclass(frozen=True)
class ErrorKind:
    """One registry entry: a reason code, its class, its HTTP status and its CLI exit code."""

    code: str
    cls: type[CutoverError]
    http_status: int
    exit_code: int


_REGISTRY: dict[str, ErrorKind] = {}
REGISTRY: Mapping[str, ErrorKind] = MappingProxyType(_REGISTRY)
"""Registry code → entry, in declaration order (read-only)."""

_E = TypeVar("_E", bound="type[CutoverError]")


def _registered(code: str, http_status: int, exit_code: int) -> Callable[[_E], _E]:
    """Class decorator: give the class its code, status and exit code, and register it once."""

    def register(cls: _E) -> _E:
        if code in _REGISTRY:
            raise TypeError(f"reason code {code!r} is taken by {_REGISTRY[code].cls.__name__}")
        if "code" in vars(cls) or "exit_code" in vars(cls) or "http_status" in vars(cls):
            raise TypeError(f"{cls.__name__}: code, status and exit code come from the registry")
        cls.code = code
        cls.http_status = http_status
        cls.exit_code = exit_code
        _REGISTRY[code] = ErrorKind(code, cls, http_status, exit_code)
        return cls

    return register


class CutoverError(Exception):
    """Base of every Cutover error.

    Args:
        message: what happened, to what, and what to do next.
        code: a finer reason code than the class's (default: the class's registry code).
    """

    code: ClassVar[str]
    http_status: ClassVar[int]
    exit_code: ClassVar[int]

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code  # type: ignore[misc]  # per-instance refinement of the class code

    @property
    def kind(self) -> str:
        """The registry code of this error's class (``code`` may be a finer reason)."""
        return kind_of(type(self)).code

    def wire_extra(self) -> dict[str, Any]:
        """Fields this error adds to its wire body (``LockedError``: ``holder``)."""
        return {}

    def __str__(self) -> str:
        return self.message


_registered("error", 500, ExitCode.FAILED)(CutoverError)


@_registered("rejected", 422, ExitCode.REJECTED)
class RejectedError(CutoverError):
    """Untrusted input was refused. Guarantees: nothing on the host changed."""


@_registered("bad_manifest", 422, ExitCode.REJECTED)
class ManifestError(RejectedError):
    """The manifest is not valid: schema, duplicate JSON keys, unsafe paths."""


@_registered("bad_package", 422, ExitCode.REJECTED)
class PackageFormatError(RejectedError):
    """The outer container is malformed or truncated."""


@_registered("bad_signature", 422, ExitCode.REJECTED)
class SignatureError(RejectedError):
    """Signatures bad, absent or untrusted, or too few (reasons ``unsigned``, ``untrusted``,
    ``threshold``)."""


@_registered("expired", 422, ExitCode.REJECTED)
class ExpiredError(RejectedError):
    """The manifest is past its ``expires_at``."""


@_registered("mismatch", 422, ExitCode.REJECTED)
class MismatchError(RejectedError):
    """App or version differ from what was asked (``app_mismatch``, ``version_mismatch``)."""


@_registered("version_exists", 422, ExitCode.REJECTED)
class ImmutableVersionError(RejectedError):
    """The same app and version was accepted before with different content."""


@_registered("downgrade", 422, ExitCode.REJECTED)
class DowngradeError(RejectedError):
    """Older than the highest version staged on this host, and no local override."""


@_registered("unsafe_archive", 422, ExitCode.REJECTED)
class UnsafeArchiveError(RejectedError):
    """A payload member is unsafe (type, path, mode, duplicate, unlisted)."""


@_registered("archive_limit", 422, ExitCode.REJECTED)
class ArchiveLimitError(RejectedError):
    """The payload exceeds a cap (bytes, entries, depth, path length)."""


@_registered("digest_mismatch", 422, ExitCode.REJECTED)
class DigestMismatchError(RejectedError):
    """The payload or a file differs in size or digest from the manifest."""


@_registered("unauthorized", 401, ExitCode.REJECTED)
class AuthError(RejectedError):
    """A signed request was refused; ``code`` is the reason (docs/protocol.md, 401 table)."""


@_registered("bad_request", 400, ExitCode.USAGE)
class RequestError(RejectedError):
    """A request body, parameter or method is malformed."""


@_registered("method_not_allowed", 405, ExitCode.USAGE)
class MethodNotAllowedError(RequestError):
    """The path exists, the method does not."""


@_registered("body_timeout", 408, ExitCode.USAGE)
class BodyTimeoutError(RequestError):
    """The request body stalled longer than the idle timeout, or took longer than the total."""


@_registered("payload_too_large", 413, ExitCode.USAGE)
class PayloadTooLargeError(RequestError):
    """The request body is over its limit (declared or counted)."""


@_registered("unsupported_media_type", 415, ExitCode.USAGE)
class UnsupportedMediaTypeError(RequestError):
    """The body's Content-Type is not the one the endpoint takes."""


@_registered("expectation_failed", 417, ExitCode.USAGE)
class ExpectationFailedError(RequestError):
    """An ``Expect`` other than ``100-continue``."""


@_registered("upload_offset", 409, ExitCode.USAGE)
class UploadOffsetError(RequestError):
    """A resumed upload starts at an offset other than the bytes the agent holds (``offset``:
    what it holds; resume from there). Nothing changed: the held bytes are kept."""

    def __init__(self, message: str, *, code: str | None = None, offset: int = 0) -> None:
        super().__init__(message, code=code)
        self.offset = offset

    def wire_extra(self) -> dict[str, Any]:
        return {"offset": self.offset}


@_registered("failed", 500, ExitCode.FAILED)
class OperationalError(CutoverError):
    """Legitimate work failed; the operator has to act (message says how)."""


@_registered("bad_config", 500, ExitCode.USAGE)
class ConfigError(OperationalError):
    """A config file is unreadable or invalid."""


@_registered("bad_key", 500, ExitCode.USAGE)
class KeyFileError(OperationalError):
    """A key file is missing, unreadable, or of the wrong kind."""


@_registered("locked", 409, ExitCode.CONFLICT)
class LockedError(OperationalError):
    """Another operation holds the app; ``holder`` says which (may be ``{}``)."""

    def __init__(
        self, message: str, *, code: str | None = None, holder: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.holder: dict[str, object] = dict(holder or {})

    def wire_extra(self) -> dict[str, Any]:
        return {"holder": self.holder} if self.holder else {}


@_registered("not_found", 404, ExitCode.NOT_FOUND)
class NotFoundError(OperationalError):
    """No such app, release, operation, package file or endpoint."""


@_registered("invalid_state", 409, ExitCode.FAILED)
class StateError(OperationalError):
    """The operation makes no sense in this state (no rollback target, a bad release)."""


@_registered("frozen", 409, ExitCode.FAILED)
class FrozenError(OperationalError):
    """Activation refused: a freeze window is in force and no signer holds an override role."""


@_registered("drift", 500, ExitCode.VERIFY_FAILED)
class DriftError(OperationalError):
    """An installed release or the journal no longer matches its record."""


@_registered("hook_failed", 500, ExitCode.FAILED)
class HookFailedError(OperationalError):
    """A lifecycle hook failed or timed out; ``results`` holds every hook run so far, the failed
    one last (agent/actions/hooks.py ``HookResult``; empty when the error crossed the wire)."""

    def __init__(
        self, message: str, *, code: str | None = None, results: list[Any] | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.results: list[Any] = list(results or [])

    @property
    def failed(self) -> Any:
        """The failed hook's result."""
        return self.results[-1]


HookError = HookFailedError
"""The former name of :class:`HookFailedError` (one class: ``except HookError`` still works)."""


@_registered("health_failed", 500, ExitCode.FAILED)
class HealthCheckError(OperationalError):
    """Health checks did not pass (staged checks; live ones end as :class:`ActivationFailedError`)."""


@_registered("reverted", 500, ExitCode.REVERTED)
class ActivationFailedError(OperationalError):
    """Activation failed after the flip and was reverted automatically; ``health``: the live
    checks' status when they failed (``fail`` | ``inconclusive``), typed on the wire too."""

    def __init__(self, message: str, *, code: str | None = None, health: str | None = None) -> None:
        super().__init__(message, code=code)
        self.health = health

    def wire_extra(self) -> dict[str, Any]:
        return {"health": self.health} if self.health else {}


@_registered("storage", 500, ExitCode.FAILED)
class StorageError(OperationalError):
    """Disk full, I/O error, permissions."""


@_registered("unavailable", 503, ExitCode.FAILED)
class UnavailableError(OperationalError):
    """The agent does not take work now (``shutting_down``); retry once it is back."""


@_registered("cancelled", 503, ExitCode.FAILED)
class CancelledOperationError(OperationalError):
    """The agent stopped before the operation ended; its effects were reverted or will be
    recovered at the next start."""


@_registered("internal", 500, ExitCode.FAILED)
class InternalError(OperationalError):
    """A bug in the agent; its log has the traceback."""


@_registered("partial", 500, ExitCode.PARTIAL)
class PartialFailureError(OperationalError):
    """Controller: a fleet operation succeeded on some hosts and failed on others.

    Args:
        succeeded: the hosts where it succeeded.
        failed: each failed host and its error.
    """

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        succeeded: list[str] | None = None,
        failed: Mapping[str, CutoverError] | None = None,
    ) -> None:
        super().__init__(message, code=code)
        self.succeeded = list(succeeded or [])
        self.failed = dict(failed or {})


@_registered("transport", 502, ExitCode.FAILED)
class TransportError(OperationalError):
    """A network failure talking to a peer (the connection broke, a bad or truncated answer)."""


@_registered("unreachable", 502, ExitCode.UNREACHABLE)
class UnreachableError(TransportError):
    """No connection to the peer at all (refused, no route, DNS, connect timeout, TLS)."""


# ---------------------------------------------------------------------- lookups
def kind_of(cls: type[CutoverError]) -> ErrorKind:
    """The registry entry of ``cls``, or of its nearest registered base."""
    for klass in cls.__mro__:
        entry = _REGISTRY.get(vars(klass).get("code", ""))
        if entry is not None and entry.cls is klass:
            return entry
    raise TypeError(f"{cls.__name__} is not a CutoverError")  # pragma: no cover


def error_class(code: str) -> type[CutoverError] | None:
    """The class registered under ``code``, if any."""
    entry = _REGISTRY.get(code)
    return entry.cls if entry is not None else None


def class_for_status(status: int) -> type[CutoverError]:
    """The class to raise for an HTTP error status without a known code (another server)."""
    exact = {401: AuthError, 404: NotFoundError, 409: LockedError, 503: UnavailableError}
    if status in exact:
        return exact[status]
    if status in (400, 405, 408, 413, 415):
        return {
            e.http_status: e.cls for e in _REGISTRY.values() if issubclass(e.cls, RequestError)
        }[status]
    if 400 <= status < 500:
        return RejectedError
    if status in (502, 504):
        return TransportError
    return OperationalError


def from_wire(
    error: str,
    message: str,
    *,
    kind: str | None = None,
    status: int | None = None,
    holder: Mapping[str, object] | None = None,
    offset: int | None = None,
    health: str | None = None,
) -> CutoverError:
    """The error a wire body ``{"error", "kind", "message"}`` stands for.

    The class is the registry's for ``kind``, else for ``error`` (a body without ``kind``), else
    the one for the HTTP ``status``; the instance's code is ``error``.
    """
    cls = (
        (error_class(kind) if kind else None)
        or error_class(error)
        or (class_for_status(status) if status is not None else OperationalError)
    )
    exc = cls(message, code=error)
    if isinstance(exc, LockedError) and holder:
        exc.holder = dict(holder)
    if isinstance(exc, UploadOffsetError) and offset is not None:
        exc.offset = offset
    if isinstance(exc, ActivationFailedError) and health:
        exc.health = health
    return exc
