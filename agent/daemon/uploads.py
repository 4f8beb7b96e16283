"""The upload spool, and the partial uploads it keeps so that an interrupted upload resumes.

Rules this module enforces (docs/protocol.md §Resumable uploads, docs/operations.md):

* **The key is signed.** An upload is identified by its app, its version and the SHA-256 of the
  whole package file. A plain ``PUT .../releases/{version}`` names that digest in its signed
  ``Content-Digest`` (its body is the whole package); a resumed one names it in its signed query
  (``?sha256=HEX&offset=N``), since its ``Content-Digest`` covers only the tail it sends. So a
  request can only ever add bytes to the upload it names, and a splice of two different packages
  can never complete: the finished file must hash to the key (:meth:`UploadSpool.check_complete`).
  The package digest, not the manifest's payload digest, is the key because it is what the agent
  can check before parsing anything, and it covers the manifest and signatures too: two packages
  with the same payload but different signatures are different uploads.
* **A partial is never trusted.** Its bytes were never compared with a signed digest (the body
  broke off before its end). It only becomes a package when the completed file hashes to the key,
  and it is then verified like any upload (signatures, manifest, payload digest).
* **Where bytes go.** While they arrive, an upload is ``<state_dir>/uploads/<op id>.cutover``
  (as before this module). When the body breaks off (the client went away, it stalled or took too
  long, the agent is stopping), the file moves to ``<state_dir>/resume/<app>/<sha256>_<version>.part``;
  a resume moves it back and appends. An offset other than the bytes held is ``409 upload_offset``
  with the held offset (nothing changed); offset ``0`` always starts afresh (the held bytes are
  dropped), so a client that knows nothing of resuming still uploads. One upload per key at a
  time: a second one is ``409 locked`` (reason ``upload_busy``).
* **Bounded.** At most ``agent.upload_resume_per_app`` partials per app and
  ``agent.upload_resume_max_bytes`` in all (the oldest are dropped first; a partial larger than
  the cap alone is not kept); each expires ``agent.upload_resume_ttl_s`` after its last byte. The
  sweep runs at start, periodically while serving, and whenever a partial is kept.
* **Only its own files.** Only names this module writes (``<64 hex>_<version>.part`` in an app's
  folder under ``resume/``) are ever removed; anything else there is left alone.

:class:`SpoolFile` is the seam where an upload's file is opened and appended to: the upload
handler (agent/daemon/package_routes.py) only calls :meth:`UploadSpool.open`, :meth:`SpoolFile.write`
and one of :meth:`UploadSpool.complete` / :meth:`UploadSpool.keep` / :meth:`UploadSpool.discard`.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from cutover.agent.config import AgentSection
from cutover.agent.errors import (
    BodyTimeoutError,
    DigestMismatchError,
    LockedError,
    RequestError,
    UploadOffsetError,
)
from cutover.agent.package.manifest import APP_RE
from cutover.agent.versions import VERSION_RE

__all__ = [
    "PART_RE",
    "RESUMABLE",
    "SHA256_RE",
    "ResumeLimits",
    "SpoolFile",
    "UploadKey",
    "UploadSpool",
]

log = structlog.get_logger(__name__)

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_VERSION = VERSION_RE.pattern.removeprefix("^").removesuffix("$")
PART_RE = re.compile(rf"(?P<sha256>[0-9a-f]{{64}})_(?P<version>{_VERSION})\.part")
# What ends a body early without it being wrong (the client went away, stalled or was too slow;
# the agent is stopping): the bytes so far are kept for a resume.
RESUMABLE = (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, BodyTimeoutError)
_OFFSET_DIGITS = 20


@dataclass(frozen=True)
class UploadKey:
    """What names an upload: app, version and the SHA-256 (hex) of the whole package file."""

    app: str
    version: str
    sha256: str

    @property
    def filename(self) -> str:
        return f"{self.sha256}_{self.version}.part"

    @classmethod
    def of_request(
        cls, app: str, version: str, query: Any, content_digest: bytes
    ) -> tuple[UploadKey, int]:
        """The key and offset a (signed) upload request names.

        Args:
            query: the request's query (``sha256``, ``offset``; already checked for unknown or
                repeated names).
            content_digest: the request's signed body digest: the package's for a plain upload.

        Raises:
            RequestError: a malformed ``sha256`` or ``offset``, or an offset without ``sha256``.
        """
        sha = query.get("sha256")
        raw = query.get("offset")
        if sha is None:
            if raw is not None:
                raise RequestError("offset needs sha256: the digest of the whole package")
            return cls(app, version, content_digest.hex()), 0
        if not SHA256_RE.fullmatch(sha):
            raise RequestError("sha256 must be the package's SHA-256 as 64 lowercase hex digits")
        if raw is None:
            return cls(app, version, sha), 0
        if not raw.isascii() or not raw.isdigit() or len(raw) > _OFFSET_DIGITS:
            raise RequestError("offset must be a non-negative integer (bytes already sent)")
        return cls(app, version, sha), int(raw)


@dataclass(frozen=True)
class ResumeLimits:
    """How much of interrupted uploads is kept (agent.upload_resume_*)."""

    ttl_s: float
    per_app: int
    max_bytes: int

    @classmethod
    def of(cls, agent: AgentSection) -> ResumeLimits:
        return cls(
            agent.upload_resume_ttl_s, agent.upload_resume_per_app, agent.upload_resume_max_bytes
        )


@dataclass(eq=False)
class SpoolFile:
    """One upload being received into ``path``: bytes are appended, the whole file is hashed."""

    key: UploadKey
    path: Path
    offset: int
    _fh: BinaryIO
    _digest: Any
    size: int = 0
    settled: bool = False  # completed, kept or discarded: the key is free again
    _closed: bool = field(default=False, repr=False)

    async def write(self, data: bytes) -> None:
        """Append ``data`` (blocking work in a thread)."""
        await asyncio.to_thread(self._append, data)

    def _append(self, data: bytes) -> None:
        self._fh.write(data)
        self._fh.flush()  # in the file, not a buffer: a streaming stage reads it as it grows
        self._digest.update(data)
        self.size += len(data)

    def close(self) -> None:
        """Close the file (blocking; idempotent)."""
        if not self._closed:
            self._closed = True
            self._fh.close()

    def sha256(self) -> str:
        return str(self._digest.hexdigest())


class UploadSpool:
    """The daemon's uploads (``uploads/``) and the partials it keeps (``resume/``).

    Args:
        state_dir: the agent's state directory.
        limits: the limits in force (read at each use: a reload applies to the next one).
    """

    def __init__(self, state_dir: Path, limits: Callable[[], ResumeLimits]) -> None:
        self.uploads_dir = state_dir / "uploads"
        self.resume_dir = state_dir / "resume"
        self._limits = limits
        self._busy: set[UploadKey] = set()
        self._lock = threading.Lock()  # resume/ is changed from worker threads

    # ------------------------------------------------------------------ queries
    def _held_path(self, key: UploadKey) -> Path:
        return self.resume_dir / key.app / key.filename

    def held(self, key: UploadKey) -> int:
        """Bytes held for ``key`` (0: none). Blocking."""
        try:
            return self._held_path(key).stat().st_size
        except FileNotFoundError:
            return 0

    def busy(self, key: UploadKey) -> bool:
        """An upload of ``key`` is being received now."""
        return key in self._busy

    # ------------------------------------------------------------------ one upload
    async def open(self, key: UploadKey, offset: int, op_id: str) -> SpoolFile:
        """Start receiving ``key`` at ``offset`` into ``uploads/<op_id>.cutover``.

        Raises:
            LockedError: ``upload_busy``, another upload of the same key is being received.
            UploadOffsetError: ``offset`` is neither 0 nor the bytes held (``offset``: those).
        """
        if key in self._busy:
            raise LockedError(
                f"an upload of {key.app} {key.version} (sha256 {key.sha256[:16]}…) is being "
                "received now; wait for it to end, then resume",
                code="upload_busy",
                holder={"upload": key.sha256, "version": key.version},
            )
        self._busy.add(key)
        try:
            return await asyncio.to_thread(self._open, key, offset, op_id)
        except BaseException:
            self._busy.discard(key)
            raise

    def _open(self, key: UploadKey, offset: int, op_id: str) -> SpoolFile:
        dest = self.uploads_dir / f"{op_id}.cutover"
        held_path = self._held_path(key)
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._lock:
            held = self.held(key)
            if offset and offset != held:
                raise UploadOffsetError(
                    f"{key.app} {key.version}: the agent holds {held} bytes of this package, not "
                    f"{offset}; resume at offset {held}",
                    offset=held,
                )
            if offset:
                os.replace(held_path, dest)
            elif held:
                held_path.unlink()
                log.info("upload_restarted", app=key.app, version=key.version, discarded=held)
        if offset:
            fd = os.open(dest, flags | os.O_APPEND)
            with open(dest, "rb") as prefix:  # the bytes held, hashed once
                digest = hashlib.file_digest(prefix, "sha256")
            log.info("upload_resumed", app=key.app, version=key.version, offset=offset)
        else:
            fd = os.open(dest, flags | os.O_CREAT | os.O_EXCL, 0o600)
            digest = hashlib.sha256()
        return SpoolFile(key, dest, offset, os.fdopen(fd, "wb"), digest, size=offset)

    def check_complete(self, spool: SpoolFile) -> None:
        """The whole file is the package the key names.

        Raises:
            DigestMismatchError: ``package_digest``; the caller discards the upload.
        """
        if not hmac.compare_digest(spool.sha256(), spool.key.sha256):
            raise DigestMismatchError(
                f"the uploaded package ({spool.size} bytes) does not have the SHA-256 the "
                f"request named ({spool.key.sha256[:16]}…); the held bytes were discarded: "
                "upload the package again from offset 0",
                code="package_digest",
            )

    async def complete(self, spool: SpoolFile) -> None:
        """The body arrived whole: close the file; it now belongs to the stage operation."""
        await asyncio.to_thread(spool.close)
        self._settle(spool)

    async def discard(self, spool: SpoolFile) -> None:
        """Remove the upload's file (a refusal, or the end of its operation). Idempotent."""
        if spool.settled:
            return

        def remove() -> None:
            spool.close()
            spool.path.unlink(missing_ok=True)

        await asyncio.to_thread(remove)
        self._settle(spool)

    async def keep(self, spool: SpoolFile) -> int:
        """The body broke off: keep what arrived for a resume (within the limits).

        Returns:
            The bytes kept (0: nothing was, the limits do not allow it).
        """
        if spool.settled:
            return 0
        try:
            return await asyncio.to_thread(self._keep, spool)
        finally:
            self._settle(spool)

    def _keep(self, spool: SpoolFile) -> int:
        spool.close()
        limits = self._limits()
        key = spool.key
        if not limits.per_app or not spool.size or spool.size > limits.max_bytes:
            spool.path.unlink(missing_ok=True)
            log.info("upload_not_kept", app=key.app, version=key.version, bytes=spool.size)
            return 0
        with self._lock:
            (self.resume_dir / key.app).mkdir(mode=0o700, parents=True, exist_ok=True)
            os.replace(spool.path, self._held_path(key))
        log.info(
            "upload_kept",
            app=key.app,
            version=key.version,
            sha256=key.sha256,
            bytes=spool.size,
            expires_in_s=limits.ttl_s,
        )
        self.sweep()
        return spool.size

    def _settle(self, spool: SpoolFile) -> None:
        spool.settled = True
        self._busy.discard(spool.key)

    # ------------------------------------------------------------------ limits
    def prepare(self) -> None:
        """Create ``resume/`` (mode 0700) and sweep it. Blocking."""
        self.resume_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.sweep()

    def _partials(self) -> list[tuple[float, int, Path, str]]:
        """(mtime, size, path, app) of every partial this module wrote, oldest first."""
        found = []
        try:
            apps = sorted(self.resume_dir.iterdir())
        except FileNotFoundError:
            return []
        for folder in apps:
            if not APP_RE.fullmatch(folder.name) or not folder.is_dir() or folder.is_symlink():
                continue
            for entry in sorted(folder.iterdir()):
                if not PART_RE.fullmatch(entry.name):
                    continue
                st = entry.lstat()
                if entry.is_symlink() or not entry.is_file():
                    continue
                found.append((st.st_mtime, st.st_size, entry, folder.name))
        found.sort(key=lambda p: (p[0], str(p[2])))
        return found

    def sweep(self, now: float | None = None) -> list[str]:
        """Remove expired partials, then the oldest beyond the limits. Blocking.

        Returns:
            ``app/name`` of each partial removed.
        """
        limits = self._limits()
        now = time.time() if now is None else now
        removed: list[str] = []
        with self._lock:
            partials = self._partials()
            keep: list[tuple[float, int, Path, str]] = []
            for mtime, size, path, app in partials:
                if now - mtime > limits.ttl_s:
                    self._drop(path, app, "expired", removed)
                else:
                    keep.append((mtime, size, path, app))
            per_app: dict[str, int] = {}
            for _, _, _, app in keep:
                per_app[app] = per_app.get(app, 0) + 1
            total = sum(size for _, size, _, _ in keep)
            for _, size, path, app in keep:  # oldest first
                if per_app[app] > limits.per_app or total > limits.max_bytes:
                    per_app[app] -= 1
                    total -= size
                    self._drop(path, app, "over_limit", removed)
        return removed

    @staticmethod
    def _drop(path: Path, app: str, reason: str, removed: list[str]) -> None:
        path.unlink(missing_ok=True)
        removed.append(f"{app}/{path.name}")
        log.info("upload_partial_removed", app=app, partial=path.name, reason=reason)

    async def sweep_loop(self, stop: asyncio.Event) -> None:
        """Sweep every ``min(ttl / 4, 60 s)`` until ``stop`` is set."""
        while not stop.is_set():
            interval = min(self._limits().ttl_s / 4, 60.0)
            try:
                await asyncio.wait_for(stop.wait(), timeout=interval)
            except TimeoutError:
                try:
                    await asyncio.to_thread(self.sweep)
                except OSError as exc:
                    log.warning("upload_sweep_failed", error=str(exc))
