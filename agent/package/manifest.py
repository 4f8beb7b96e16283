"""The release manifest: the unit of trust (docs/package-format.md).

Everything here is pure: bytes in, models out, :class:`ManifestError` on anything doubtful.
Rules enforced on every manifest, before any signature is even looked at:

* strict JSON: UTF-8 without BOM, no duplicate keys, no NaN/Infinity, at most 64 MiB;
* strict schema: unknown fields are errors, types are not coerced;
* the file list's rules (:mod:`agent.package.entries`): safe paths, unique also under
  case-folding and Unicode normalisation, parents listed as directories, symlinks that stay inside
  the release, safe modes;
* hooks and health checks as :mod:`agent.package.declared` models them;
* ``payload.chunks``, when present, has one digest per chunk of the declared size;
* shared paths are safe, distinct, not listed as entries, and their parent is the root or a listed
  directory.

Cheap for 20,000 entries, and never a long hold of the GIL (:func:`parse_manifest`): the entry
models carry no Python validators, pydantic-core validates the file list in batches, and the tree
rules run as whole-list operations (:func:`agent.package.entries.check_tree`). Python words the
message only when something failed.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from cutover.agent._util.gcpause import gc_paused
from cutover.agent._util.strict_json import canonical_json, strict_json_loads
from cutover.agent.errors import ManifestError
from cutover.agent.package.declared import (
    CommandCheck,
    HealthCheck,
    HealthPhase,
    HealthSpec,
    Hook,
    Hooks,
    HttpCheck,
    LogCheck,
    TcpCheck,
    VersionProbe,
)
from cutover.agent.package.entries import (
    HEX64_PATTERN,
    DirEntry,
    Entry,
    FileEntry,
    KeyedEntry,
    SymlinkEntry,
    check_relpath,
    check_tree,
    fold_key,
)
from cutover.agent.versions import validate_version

__all__ = [
    "APP_RE",
    "FORMAT_VERSION",
    "MAX_CHUNK_BYTES",
    "MAX_MANIFEST_BYTES",
    "MIN_CHUNK_BYTES",
    "Checklist",
    "CommandCheck",
    "DirEntry",
    "Entry",
    "FileEntry",
    "HealthCheck",
    "HealthPhase",
    "HealthSpec",
    "Hook",
    "Hooks",
    "HttpCheck",
    "LogCheck",
    "Manifest",
    "Payload",
    "PayloadChunks",
    "ReleaseNotes",
    "ReleaseType",
    "RollbackPlan",
    "SecurityImpact",
    "SharedPaths",
    "SymlinkEntry",
    "TcpCheck",
    "VersionProbe",
    "canonical_json",
    "check_relpath",
    "explain_validation",
    "fold_key",
    "manifest_head",
    "parse_manifest",
    "render_manifest",
    "strict_json_loads",
]

FORMAT_VERSION: Final = 1
MAX_MANIFEST_BYTES = 64 * 1024 * 1024
APP_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# Payload chunk sizes a manifest may declare: the extractor holds one chunk in memory.
MIN_CHUNK_BYTES: Final = 64 * 1024
MAX_CHUNK_BYTES: Final = 64 * 1024 * 1024


_FILES_LATER: Final = "files_checked_by_parse_manifest"  # a validation context key


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class SharedPaths(_Model):
    dirs: list[str] = []
    files: list[str] = []


_Hex64 = Annotated[str, Field(pattern=HEX64_PATTERN)]


class PayloadChunks(_Model):
    """SHA-256 of each ``size``-byte run of the compressed payload (the last may be shorter),
    so the extractor checks each chunk before the decompressor sees a byte of it
    (docs/package-format.md, "Payload chunks")."""

    size: int = Field(ge=MIN_CHUNK_BYTES, le=MAX_CHUNK_BYTES)
    sha256: list[_Hex64]

    @field_validator("size")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("chunk size must be a power of two")
        return v


class Payload(_Model):
    """The payload member as shipped: compressed size, SHA-256 and codec (and, later, chunks).

    ``base``: set by ``cutover build --base`` on a *thin package*, whose payload holds only the
    regular files that the base version's package did not; the agent takes the others from the
    releases on the host (docs/package-format.md, "Thin packages"). None (omitted) otherwise.
    """

    sha256: _Hex64
    size: int = Field(ge=0)
    compression: Literal["zstd", "gzip", "none"]
    base: str | None = None
    # None (omitted) in packages built before chunks existed: they keep the one-digest check.
    chunks: PayloadChunks | None = None

    @model_validator(mode="after")
    def _chunk_count(self) -> Payload:
        if self.chunks is not None:
            expected = -(-self.size // self.chunks.size)
            if len(self.chunks.sha256) != expected:
                raise ValueError(
                    f"payload.chunks lists {len(self.chunks.sha256)} digests; a payload of "
                    f"{self.size} bytes in chunks of {self.chunks.size} has {expected}"
                )
        return self

    @field_validator("base")
    @classmethod
    def _base(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                validate_version(v)
            except ManifestError as exc:
                raise ValueError(f"base: {exc}") from exc
        return v


class ReleaseType(StrEnum):
    MAJOR = "major"
    MINOR = "minor"
    PATCH = "patch"
    HOTFIX = "hotfix"
    SECURITY = "security"
    INFRASTRUCTURE = "infrastructure"


_Text = Annotated[str, Field(max_length=8192)]
_Items = Annotated[list[_Text], Field(max_length=1000)]


class RollbackPlan(_Model):
    """How to undo the release (docs/governance.md). ``database``: ``safe`` (the old release runs
    on the new schema), ``unsafe`` (a rollback across it needs ``--accept-db-risk``),
    ``needs-confirmation``."""

    database: Literal["safe", "unsafe", "needs-confirmation"] | None = None
    config: _Text = ""
    files: _Text = ""
    owner: _Text = ""
    approver: _Text = ""
    verification: _Items = []


class SecurityImpact(_Model):
    rbac: _Text = ""
    tenant_isolation: _Text = ""
    sensitive_data: _Text = ""


class ReleaseNotes(_Model):
    """The structured notes of the release process's template (``cutover notes`` prints them)."""

    summary: _Text = ""
    changes: _Items = []
    impacted_areas: _Items = []
    migrations: _Items = []
    operational_risks: _Items = []
    security_impact: SecurityImpact | None = None
    tests_completed: _Items = []
    known_issues: _Items = []


# The pre-release checklist as data: ``tests_passed = true``, ``code_review = "PR-123"``,
# ``pipeline = "<CI run URL>"``, ``backup_confirmed = true``. An item is done when true or a
# non-empty string.
Checklist = Annotated[
    dict[Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]{0,63}$")], bool | _Text],
    Field(max_length=100),
]


class Manifest(_Model):
    format: Literal[1]
    app: str
    version: str
    build: str = ""
    commit: str = ""
    branch: str = ""
    created_at: datetime
    expires_at: datetime | None = None
    release_type: ReleaseType = ReleaseType.MINOR
    requires_migration: bool = False
    # Governance (docs/governance.md); None = not declared, so older manifests read unchanged.
    destructive_migration: bool | None = None
    owner: str | None = Field(default=None, max_length=200)
    rollback: RollbackPlan | None = None
    release_notes: ReleaseNotes | None = None
    checklist: Checklist | None = None
    notes: str = Field(default="", max_length=65536)
    hooks: Hooks = Hooks()
    shared: SharedPaths = SharedPaths()
    health: HealthSpec = HealthSpec()
    payload: Payload
    files: list[Entry]

    @field_validator("app")
    @classmethod
    def _app(cls, v: str) -> str:
        if not APP_RE.fullmatch(v):
            raise ValueError("app must match [a-z0-9][a-z0-9_-]{0,63}")
        return v

    @field_validator("version")
    @classmethod
    def _version(cls, v: str) -> str:
        try:
            return validate_version(v)
        except ManifestError as exc:
            raise ValueError(str(exc)) from exc

    @field_validator("created_at", "expires_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is not None and v.utcoffset() is None:
            raise ValueError(
                "timestamps must carry a timezone (use UTC, e.g. 2026-03-07T12:00:00Z)"
            )
        return v

    @model_validator(mode="after")
    def _tree(self, info: ValidationInfo) -> Manifest:
        if not (info.context or {}).get(_FILES_LATER):  # parse_manifest checks them itself
            _check_files(self)
        return self

    def entries_by_path(self) -> dict[str, FileEntry | SymlinkEntry | DirEntry]:
        return {e.path: e for e in self.files}

    def total_file_bytes(self) -> int:
        return sum(e.size for e in self.files if isinstance(e, FileEntry))


def explain_validation(exc: ValidationError, what: str) -> str:
    """A one-line account of the first five problems pydantic found in ``what``."""
    lines = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        lines.append(f"{loc}: {err['msg']}")
    more = f" (+{exc.error_count() - 5} more)" if exc.error_count() > 5 else ""
    return f"{what} is invalid: " + "; ".join(lines) + more


def _check_files(m: Manifest) -> None:
    """The file list's tree rules (agent.package.entries.check_tree) and the shared paths'."""
    index = check_tree(m.files)
    seen: set[str] = set()
    for what, paths in (("shared dir", m.shared.dirs), ("shared file", m.shared.files)):
        for p in paths:
            check_relpath(p, what)
            if fold_key(p) in seen:
                raise ManifestError(f"{what} {p!r} is declared twice")
            seen.add(fold_key(p))
            if fold_key(p) in index.folded:
                raise ManifestError(
                    f"{what} {p!r} is also shipped in the package; exclude it from the build "
                    "(shared paths come from the host's shared/ directory)"
                )
            parent = p.rpartition("/")[0]
            if parent and parent not in index.dirs:
                raise ManifestError(
                    f"{what} {p!r}: its parent {parent!r} is not a directory in the release"
                )


_KEYED_ENTRY: TypeAdapter[FileEntry | SymlinkEntry | DirEntry] = TypeAdapter(KeyedEntry)


_FILES: TypeAdapter[list[FileEntry | SymlinkEntry | DirEntry]] = TypeAdapter(list[Entry])
# Entries validated per call into pydantic-core. A call holds the GIL throughout (one call over
# 20,000 entries: ~45 ms, during which the daemon's event loop cannot run); between batches
# other threads get their turn, so a stage's parse never stalls the API for long.
FILES_BATCH: Final = 1024


def _entry_problem(raw: Any, index: int) -> str:
    """Word why file entry ``index`` was refused, as the keyed union (and check_relpath) would.

    The manifest's union tries each entry type in turn, so its own errors list all three; this
    re-validates just the refused entry against the one type its keys name.
    """
    try:
        _KEYED_ENTRY.validate_python(raw, strict=True)
    except ValidationError as exc:
        for e in exc.errors():
            field = e["loc"][-1] if e["loc"] else ""
            if field == "path" and isinstance(e["input"], str):
                check_relpath(e["input"])  # raises the rule's own message
            if e["type"] == "string_pattern_mismatch" and e["ctx"]["pattern"] == HEX64_PATTERN:
                return f"manifest.json files.{index}.{field}: must be 64 lowercase hex digits"
        return explain_validation(exc, f"manifest.json files.{index}")
    return f"manifest.json files.{index} is invalid"


def _validation_error(exc: ValidationError) -> ManifestError:
    # ManifestError raised inside a model validator arrives wrapped; unwrap it for a clean message.
    for err in exc.errors():
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, ManifestError):
            return ManifestError(str(cause))
    return ManifestError(explain_validation(exc, "manifest.json"))


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate ``manifest.json`` bytes.

    The strict JSON parse comes first (it is the only one that sees duplicate keys). Then
    pydantic-core validates everything but the file list as one small JSON document, and the
    file list in batches of :data:`FILES_BATCH` (no Python per entry), and the tree rules run
    once over the whole list (:func:`agent.package.entries.check_tree`).

    Raises:
        ManifestError: anything in the module docstring's rules is broken.
    """
    with gc_paused():  # ~60,000 acyclic objects built: no collector scans (agent/_util/gcpause.py)
        return _parse_manifest(data)


def _parse_manifest(data: bytes) -> Manifest:
    obj = strict_json_loads(data, "manifest.json", MAX_MANIFEST_BYTES)  # BOM, duplicates, NaN
    files = obj.get("files") if isinstance(obj, dict) else None
    try:
        if not isinstance(files, list):  # not the shape of a manifest: pydantic says why
            return Manifest.model_validate_json(data, strict=True)
        # JSON mode keeps strict types (no "1" for 1) while reading ISO timestamps from strings.
        head = Manifest.model_validate_json(
            json.dumps({**obj, "files": []}), strict=True, context={_FILES_LATER: True}
        )
    except ValidationError as exc:
        raise _validation_error(exc) from exc
    entries: list[FileEntry | SymlinkEntry | DirEntry] = []
    for start in range(0, len(files), FILES_BATCH):
        try:
            entries += _FILES.validate_python(files[start : start + FILES_BATCH], strict=True)
        except ValidationError as exc:
            index = start + int(exc.errors()[0]["loc"][0])
            raise ManifestError(_entry_problem(files[index], index)) from exc
    manifest = head.model_copy(update={"files": entries})
    _check_files(manifest)
    return manifest


def render_manifest(manifest: Manifest) -> bytes:
    """The canonical ``manifest.json`` bytes of ``manifest`` (sorted keys, no spaces, UTF-8,
    one trailing newline; fields that are None omitted), which :func:`parse_manifest` reads back
    as an equal model. The same model always renders to the same bytes: builds are reproducible.
    """
    return canonical_json(manifest.model_dump(mode="json", exclude_none=True))


def manifest_head(head_json: str) -> Manifest:
    """A manifest without its file list, from ``Manifest.model_dump_json(exclude={"files"})`` of
    one that :func:`parse_manifest` accepted (a stage worker's answer, agent/worker/).

    Its ``files`` is empty: only for code that reads the other fields (install, hooks, health,
    the release record). The file list's checks ran where the whole manifest was parsed.

    Raises:
        ManifestError: not such a dump.
    """
    try:
        obj = strict_json_loads(head_json.encode(), "manifest head", MAX_MANIFEST_BYTES)
        if not isinstance(obj, dict) or "files" in obj:
            raise ManifestError("a manifest head carries every field but the file list")
        return Manifest.model_validate_json(
            json.dumps({**obj, "files": []}), strict=True, context={_FILES_LATER: True}
        )
    except ValidationError as exc:
        raise _validation_error(exc) from exc
