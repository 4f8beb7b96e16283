"""The JSON bodies of the agent API (``/v1``), as pydantic models both sides use.

The server (agent/daemon/routes.py, agent/daemon/operations.py) builds its answers from these
models; the client (controller/client.py) parses every answer into them, so a caller gets typed
records (``record.status``, ``record.result.version``), never ``dict[str, Any]``.
docs/protocol.md describes the same bodies for third parties.

Strictness, by direction (docs/protocol.md, "Transport"):

* **responses are tolerant but typed** (``extra="allow"``): the fields listed here are validated
  and typed; a field a newer agent adds is kept (``model_extra``) instead of failing an older
  controller, because ``/v1`` may *add* fields to responses. Event and journal entries carry
  event-specific fields that way.
* **request bodies are strict** (``extra="forbid"``, ``strict``, in agent/daemon/bodies.py): a typo is a
  ``400``, never a silent default.

Errors have one wire shape, :class:`ErrorBody` (``{"error", "kind", "message", "holder"?}``),
rendered from and parsed back into the classes of the registry in agent/errors.py.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cutover.agent.errors import CutoverError, from_wire

__all__ = [
    "Accepted",
    "AgentInfo",
    "AppDetail",
    "AppSummary",
    "AppsList",
    "ErrorBody",
    "Event",
    "FreezeWindow",
    "Health",
    "JournalEntry",
    "JournalPage",
    "LeaseInfo",
    "LeaseReleased",
    "MissingAnswer",
    "OperationLinks",
    "OperationRecord",
    "OperationResult",
    "PendingIntent",
    "ReleaseInfo",
    "UploadStatus",
]


class _Response(BaseModel):
    """Base of every response body: typed fields, unknown ones kept (forward compatible)."""

    model_config = ConfigDict(extra="allow", frozen=True)

    def to_json(self) -> dict[str, Any]:
        """The body as sent: every field that was given, ``None`` included (``"current": null``
        is information); optional fields never given (an absent detail) stay absent."""
        return self.model_dump(mode="json", by_alias=True, exclude_unset=True)


# ---------------------------------------------------------------------- errors
class ErrorBody(_Response):
    """``{"error": CODE, "kind": REGISTRY_CODE, "message": TEXT}`` (+ ``holder`` for ``locked``,
    ``health`` for ``reverted`` when the live checks failed: ``fail`` or ``inconclusive``).

    ``error`` is the instance's reason code (``replayed``, ``payload_digest``), ``kind`` the
    registry code of its class (``unauthorized``, ``digest_mismatch``): agent/errors.py.
    """

    error: str
    kind: str | None = None  # absent from agents before the registry: the client falls back
    message: str = ""
    holder: dict[str, Any] | None = None
    offset: int | None = None  # upload_offset: the bytes the agent holds (resume from there)
    health: str | None = None  # ``reverted``: the live health status (fail | inconclusive)

    @classmethod
    def of(cls, exc: CutoverError) -> ErrorBody:
        """The wire body of ``exc``."""
        return cls(error=exc.code, kind=exc.kind, message=exc.message, **exc.wire_extra())

    def to_error(self, *, where: str = "", status: int | None = None) -> CutoverError:
        """The error this body stands for: the registry's class, the same code.

        Args:
            where: prefixed to the message (``http://web-1:7801 POST /v1/...``).
            status: the HTTP status, used only when neither code is in the registry.
        """
        message = f"{where}: {self.message}" if where else self.message
        return from_wire(
            self.error,
            message,
            kind=self.kind,
            status=status,
            holder=self.holder,
            offset=self.offset,
            health=self.health,
        )


# ---------------------------------------------------------------------- reads
class Health(_Response):
    """``GET /v1/health``."""

    status: str


class AgentInfo(_Response):
    name: str
    version: str


class PendingIntent(_Response):
    """The write-ahead intent of an interrupted activation or rollback (agent/host/state.py)."""

    op: str
    op_id: str
    from_version: str | None = None
    to_version: str
    phase: str
    started_at: str = ""
    actor: str = ""


class AppSummary(_Response):
    """One app of ``GET /v1/apps``. An app whose state cannot be read has only ``app``,
    ``root`` and ``error``."""

    app: str
    root: str
    current: str | None = None
    previous: str | None = None
    staged: list[str] = []
    highest_version: str | None = None
    pending: PendingIntent | None = None
    busy: dict[str, Any] | None = None
    error: str | None = None


class AppsList(_Response):
    """``GET /v1/apps``."""

    agent: AgentInfo
    apps: list[AppSummary]


class ReleaseInfo(_Response):
    """One release record of the state file, as ``GET /v1/apps/{app}`` serves it.

    The same fields as agent/host/state.py ``ReleaseRecord`` (tests/agent/test_api_models.py
    keeps them equal); ``status`` is a plain string so a newer state never breaks a client.
    """

    version: str
    status: str
    seq: int
    manifest_digest: str
    runtime_digest: str = ""
    signers: list[str] = []
    release_type: str = ""
    build: str = ""
    commit: str = ""
    branch: str = ""
    notes: str = ""
    summary: str = ""
    payload_digest: str = ""
    requires_migration: bool = False
    owner: str = ""
    db_rollback: str = ""
    staged_at: str = ""
    staged_by: str = ""
    activated_at: str | None = None
    activated_by: str | None = None
    first_activated_at: str | None = None
    left_by: str = ""
    pinned: bool = False
    adopted: bool = False  # recorded by `cutover-agent adopt`: unsigned, rollback target only
    installed: bool = True
    reason: str = ""
    checkpoint_ref: str | None = None
    hooks: list[dict[str, Any]] = []
    health: list[dict[str, Any]] = []
    content: dict[str, int] = {}  # files and bytes from the payload vs reused, by method
    seal_sha256: str | None = None  # digest of its seal's rows (docs/lifecycle.md §1.2)


class FreezeWindow(_Response):
    """A freeze window in force that refuses activating a release now (agent/trust/freeze.py)."""

    name: str
    starts_at: str
    ends_at: str
    release_types: list[str] | None = None  # None: every release type
    override_roles: list[str] = []


class AppDetail(AppSummary):
    """``GET /v1/apps/{app}``: the summary, ``initialized`` and the releases, newest first."""

    initialized: bool
    releases: list[ReleaseInfo]
    # staged version -> the freeze window that would refuse activating it now (absent: none)
    frozen: dict[str, FreezeWindow] = {}


class JournalEntry(_Response):
    """One journal line as stored; the event's own fields are extras (``entry.model_extra``)."""

    seq: int
    ts: str
    event: str
    prev: str = ""


class JournalPage(_Response):
    """``GET /v1/apps/{app}/journal``: the last N entries, oldest first."""

    app: str
    entries: list[JournalEntry]


# ---------------------------------------------------------------------- operations
class OperationLinks(_Response):
    self_: str = Field(alias="self")
    events: str


class Accepted(_Response):
    """The ``202`` that starts an operation."""

    operation: str
    op: str
    app: str
    version: str | None = None
    status: str
    links: OperationLinks


class OperationResult(_Response):
    """What a lifecycle operation did (agent/lifecycle ``OpResult``); also the ``200`` of pin.

    The operation-specific details are typed where known and ``None`` when absent.
    """

    op: str
    app: str
    ok: bool
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    message: str = ""
    recovered: list[str] = []
    already_staged: bool | None = None
    already_active: bool | None = None
    pruned: list[str] | None = None
    warnings: list[str] | None = None
    health: dict[str, Any] | None = None
    fetched_bytes: int | None = None


class OperationRecord(_Response):
    """``GET /v1/operations/{id}``."""

    id: str
    op: str
    app: str
    version: str | None = None
    actor: str = ""
    status: str  # running | succeeded | failed
    phase: str = ""
    created_at: str = ""
    finished_at: str | None = None
    duration_s: float | None = None
    result: OperationResult | None = None
    error: ErrorBody | None = None
    events: int = 0
    dropped_events: int = 0

    @property
    def running(self) -> bool:
        return self.status == "running"

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    def raise_for_error(self, where: str = "") -> OperationRecord:
        """Raise the operation's error as its registry class (like a local call would).

        Returns:
            The record itself when the operation did not fail (running or succeeded).

        Raises:
            CutoverError: the subclass named by ``error`` (``DowngradeError``,
                ``SignatureError``, ``ActivationFailedError``, ...), with the same code.
        """
        if self.status != "failed":
            return self
        body = self.error or ErrorBody(error="failed", kind="failed", message="operation failed")
        raise body.to_error(where=where or f"operation {self.id} ({self.op} {self.app})")


class Event(_Response):
    """One line of ``GET /v1/operations/{id}/events`` (docs/protocol.md lists the events).

    The fields most events share are typed (``None`` when an event has none); the rest of an
    event's fields are extras (``event.model_extra``).
    """

    seq: int
    ts: str
    event: str
    app: str | None = None
    op: str | None = None
    version: str | None = None
    phase: str | None = None
    status: str | None = None  # operation.done: succeeded|failed; health.*: pass|fail|...
    name: str | None = None
    hook: str | None = None
    line: str | None = None
    message: str | None = None
    result: OperationResult | None = None  # operation.done
    error: ErrorBody | str | None = None  # operation.done: the body; stage.failed: the text

    def raise_for_error(self, where: str = "") -> Event:
        """For a failed ``operation.done``: raise its error as its registry class.

        The stream may be all a follower gets (the agent stopped: the record is gone with it).

        Returns:
            The event itself otherwise.
        """
        if self.event != "operation.done" or self.status != "failed":
            return self
        body = self.error
        if not isinstance(body, ErrorBody):
            body = ErrorBody(error="failed", kind="failed", message=body or "operation failed")
        raise body.to_error(where=where)


class LeaseInfo(_Response):
    """``POST /v1/apps/{app}/lease``: the app's lease (agent/daemon/leases.py)."""

    id: str
    app: str
    rollout: str
    owner: str
    actor: str
    acquired_at: float
    expires_at: float
    ttl_s: float
    expires: str = ""


class MissingAnswer(_Response):
    """``POST /v1/apps/{app}/releases/{version}/missing``: the digests no installed release
    holds (in the order asked) and how many of the others it does."""

    missing: list[str]
    present: int


class LeaseReleased(_Response):
    """``DELETE /v1/apps/{app}/lease/{id}``."""

    app: str
    lease: str
    released: bool


class UploadStatus(_Response):
    """``GET /v1/apps/{app}/releases/{version}/upload/{sha256}``: the bytes held for a resume."""

    app: str
    version: str
    sha256: str
    offset: int  # resume a PUT at this byte (0: nothing held)
    busy: bool = False  # an upload of this package is being received now
    # the asking key's upload of this package completed and this operation took it (its 202,
    # status as of now): a sender cut off before the 202 follows it instead of uploading again
    operation: Accepted | None = None
