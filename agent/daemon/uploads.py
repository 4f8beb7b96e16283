"""The upload spool, and the partial uploads it keeps so that an interrupted upload resumes.

Rules this module enforces (docs/protocol.md §Resumable uploads, docs/operations.md):

* **The key is signed.** An upload is identified by its app, its version and the SHA-256 of the
  whole package file. A plain ``PUT .../releases/{version}`` names that digest in its signed
  ``Content-Digest`` (its body is the whole package); a resumed one names it in its signed query
  (``?sha256=HEX&offset=N``), since its ``Content-Digest`` covers only the tail it sends. So a
  request can only ever add bytes to the upload it names, and a splice of two different packages
  can never complete: the finished file must hash to the key (:meth:`UploadSpool.check_complete`).
  A fresh upload (offset 0) is hashed once: its body's SHA-256, which the receiving loop computes
  for the ``Content-Digest`` anyway, is the whole file's (``body_hashed``); a resumed file hashes
  the bytes held and what it appends.
  The package digest, not the manifest's payload digest, is the key because it is what the agent
  can check before parsing anything, and it covers the manifest and signatures too: two packages
  with the same payload but different signatures are different uploads.
* **A partial is never trusted.** Its bytes were never compared with a signed digest (the body
  broke off before its end). It only becomes a package when the completed file hashes to the key,
  and it is then verified like any upload (signatures, manifest, payload digest).
* **Where bytes go.** While they arrive, an upload is ``<state_dir>/uploads/<op id>.cutover``
  (as before this module). When the body breaks off (the client went away, it stalled or took too
  long, the agent is stopping), the file is fsynced and moves to
  ``<state_dir>/resume/<app>/<sha256>_<version>.<owner>.part`` (:func:`owner_of` the sending key).
  A resume appends *in place* (``uploads/<op id>.cutover`` is a hard link to the held file): a
  ``kill -9`` mid-resume leaves the held bytes and what arrived under the resume name, which goes
  only when the upload completes or is discarded. An offset other than the bytes held is
  ``409 upload_offset`` with the held offset (nothing changed); a resume by another key than the
  one that sent the held bytes is ``409 upload_offset`` with offset 0 (its bytes are never
  appended to another key's partial). Offset ``0`` always starts afresh (the held bytes are
  dropped), so a client that knows nothing of resuming still uploads. One upload per key at a
  time: a second one is ``409 locked`` (reason ``upload_busy``).
* **Gone before the durable step.** Once a stage operation took the file, nothing keeps it: the
  stage releases it right after extracting (or claiming its streamed tree), and the daemon
  unlinks it before the release is sealed and synced, so the kernel drops its dirty pages
  rather than writing them back (docs/lifecycle.md §1.3). Every refusal that keeps bytes for a
  resume (below) is decided before the stage operation starts, so none is affected.
* **Kept on a refusal.** A whole, hash-correct package whose app became busy meanwhile is kept
  (:meth:`UploadSpool.keep`); a resumed tail that is wrong (``401``/``422``) is cut off again,
  keeping the bytes held before it (:meth:`UploadSpool.rewind`).
* **Bounded.** At most ``agent.upload_resume_per_app`` partials per app and
  ``agent.upload_resume_max_bytes`` in all (the oldest are dropped first; a partial larger than
  the cap alone is not kept); each expires ``agent.upload_resume_ttl_s`` after its last byte. The
  sweep runs at start, periodically while serving, and whenever a partial is kept.
* **Room for a stage.** The spool is a :class:`agent.host.room.SpaceHolder`: retention by disk
  drops expired partials before it prunes a release and, when a stage still needs room, the
  partials of that app on that filesystem that nobody is appending to (reason ``disk``); an
  ``insufficient_space`` refusal names ``resume/`` and the bytes it still holds.
* **Who took it.** The operation that took a completed upload is remembered (the last
  :data:`TAKEN_KEEP`, in memory) for the key that sent it, until that key starts another upload
  of the package, so a sender whose connection broke after the whole body but before the
  ``202`` learns from the resume query which operation stages its package
  (:meth:`UploadSpool.taken`).
* **Only its own files.** Only names this module writes (``<64 hex>_<version>.<16 hex>.part`` in an
  app's folder under ``resume/``) are ever removed; anything else there is left alone, and a
  symlink there (an app's folder or a partial) is never followed.

:class:`SpoolFile` is the seam where an upload's file is opened and appended to: the upload
handler (agent/daemon/package_routes.py) only calls :meth:`UploadSpool.open`, :meth:`SpoolFile.write`
and one of :meth:`UploadSpool.complete` / :meth:`UploadSpool.keep` / :meth:`UploadSpool.rewind` /
:meth:`UploadSpool.discard`.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import hmac
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import structlog

from cutover.agent._util.fsutil import fsync_dir
from cutover.agent.daemon.upload_keys import (
    PART_RE,
    SHA256_RE,
    UploadKey,
    offset_error,
    owner_of,
)
from cutover.agent.daemon.upload_partials import ResumeLimits, ResumeStore, SpoolCounters
from cutover.agent.errors import (
    BodyTimeoutError,
    DigestMismatchError,
    LockedError,
    UploadOffsetError,
)

__all__ = [
    "PART_RE",
    "RESUMABLE",
    "SHA256_RE",
    "TAKEN_KEEP",
    "ResumeLimits",
    "SpoolCounters",
    "SpoolFile",
    "UploadKey",
    "UploadSpool",
    "owner_of",
]

log = structlog.get_logger(__name__)

# What ends a body early without it being wrong (the client went away, stalled or was too slow;
# the agent is stopping): the bytes so far are kept for a resume.
RESUMABLE = (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError, BodyTimeoutError)
TAKEN_KEEP = 256  # completed uploads whose operation the resume query can name
_IOV_MAX = 1024  # buffers per writev (Linux's IOV_MAX)


@dataclass(eq=False)
class SpoolFile:
    """One upload being received into ``path``: bytes are appended, the whole file is hashed
    (here; or, ``_digest`` None, by the caller of :meth:`UploadSpool.check_complete`)."""

    key: UploadKey
    path: Path
    offset: int
    owner: str
    _fh: BinaryIO
    _digest: Any
    held: Path | None = None  # a resume: the held file ``path`` is a hard link to
    op_id: str = ""  # the operation the upload was received for
    size: int = 0
    settled: bool = False  # completed, kept or discarded: the key is free again
    _closed: bool = field(default=False, repr=False)
    # An append and the close, one at a time: a receive cancelled mid-write (the agent
    # stopping) leaves its append running in its thread while keep() closes the file, and the
    # append writes through the raw descriptor number, which the next open() may take.
    _mu: threading.Lock = field(default_factory=threading.Lock, repr=False)

    async def write(self, data: bytes | Sequence[bytes]) -> None:
        """Append ``data``, one buffer or a batch of them in order (blocking work in a thread)."""
        await asyncio.to_thread(self._append, [data] if isinstance(data, bytes) else data)

    def _append(self, chunks: Sequence[bytes]) -> None:
        # One writev of the batch's chunks as received: no joined copy of each byte. Straight
        # to the file, never a buffer: a streaming stage reads it as it grows.
        with self._mu:
            if self._closed:
                raise ValueError(f"the upload spool {self.path} is closed: nothing appended")
            fd = self._fh.fileno()
            pending: list[bytes | memoryview] = [c for c in chunks if c]
            while pending:
                n = os.writev(fd, pending[:_IOV_MAX])
                if not n:  # never for a regular file with room (that is ENOSPC): no endless loop
                    raise OSError(errno.EIO, f"writing the upload spool {self.path} wrote nothing")
                while n and pending:
                    if n >= len(pending[0]):
                        n -= len(pending.pop(0))
                    else:
                        pending[0] = memoryview(pending[0])[n:]  # a short write: the rest
                        n = 0
            for c in chunks:
                if self._digest is not None:
                    self._digest.update(c)
                self.size += len(c)

    def close(self, fsync: bool = False) -> None:
        """Close the file, fsynced first if ``fsync`` (blocking; idempotent). An append still
        running (its receive was cancelled) ends first: every byte it took is in the file."""
        with self._mu:
            if self._closed:
                return
            self._closed = True
            try:
                if fsync:
                    self._fh.flush()
                    os.fsync(self._fh.fileno())
            finally:
                self._fh.close()

    def sha256(self, body_sha256: bytes | None = None) -> str:
        """The file's SHA-256 (hex); ``body_sha256``: that of every byte written to a spool
        opened with ``body_hashed`` (then the file's own)."""
        if self._digest is not None:
            return str(self._digest.hexdigest())
        if body_sha256 is None:
            raise ValueError("a spool opened with body_hashed needs the body's SHA-256")
        return body_sha256.hex()


class UploadSpool:
    """The daemon's uploads (``uploads/``) and the partials it keeps (``resume/``).

    Args:
        state_dir: the agent's state directory.
        limits: the limits in force (read at each use: a reload applies to the next one).
    """

    def __init__(
        self,
        state_dir: Path,
        limits: Callable[[], ResumeLimits],
        counters: SpoolCounters | None = None,
    ) -> None:
        self.uploads_dir = state_dir / "uploads"
        self.resume_dir = state_dir / "resume"
        self._limits = limits
        self._counters = counters
        self._busy: set[UploadKey] = set()
        self._taken: OrderedDict[tuple[UploadKey, str], str] = OrderedDict()
        self.partials = ResumeStore(self.resume_dir, limits, self._busy.copy, counters)
        self._lock = self.partials.lock

    # ------------------------------------------------------------------ queries
    def held(self, key: UploadKey, owner: str) -> int:
        """Bytes held for ``key`` that the key ``owner`` may resume from (0: none). Blocking."""
        found = self.partials.find(key)
        return found[2] if found is not None and found[1] == owner else 0

    def busy(self, key: UploadKey) -> bool:
        """An upload of ``key`` is being received now."""
        return key in self._busy

    def taken(self, key: UploadKey, owner: str) -> str | None:
        """The operation that took the completed upload of ``key`` sent by ``owner`` (None:
        none remembered)."""
        return self._taken.get((key, owner))

    # ------------------------------------------------------------------ one upload
    async def open(
        self, key: UploadKey, offset: int, op_id: str, owner: str, *, body_hashed: bool = False
    ) -> SpoolFile:
        """Start receiving ``key`` at ``offset`` into ``uploads/<op_id>.cutover``.

        Args:
            owner: :func:`owner_of` the key that signed the request.
            body_hashed: the caller hashes every byte it writes and passes that digest to
                :meth:`check_complete`: at offset 0 the file is then not hashed a second time
                (a resume still hashes the bytes held and the tail).

        Raises:
            LockedError: ``upload_busy``, another upload of the same key is being received.
            UploadOffsetError: ``offset`` is neither 0 nor the bytes held (``offset``: those),
                or the bytes held were sent by another key (``offset``: 0).
        """
        if key in self._busy:
            raise LockedError(
                f"an upload of {key.app} {key.version} (sha256 {key.sha256[:16]}…) is being "
                "received now; wait for it to end, then resume",
                code="upload_busy",
                holder={"upload": key.sha256, "version": key.version},
            )
        self._busy.add(key)
        self._taken.pop((key, owner), None)  # what it names is this upload's outcome from now
        try:
            spool = await asyncio.to_thread(self._open, key, offset, op_id, owner, body_hashed)
        except BaseException as exc:
            self._busy.discard(key)
            if offset and isinstance(exc, UploadOffsetError):
                self._count_resume(key.app, "refused")
            raise
        if offset:
            self._count_resume(key.app, "accepted")
        return spool

    def _count_resume(self, app: str, result: str) -> None:
        if self._counters is not None:
            self._counters.upload_resume(app, result)

    def _open(
        self, key: UploadKey, offset: int, op_id: str, owner: str, body_hashed: bool
    ) -> SpoolFile:
        dest = self.uploads_dir / f"{op_id}.cutover"
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC
        with self._lock:
            found = self.partials.find(key)
            if not offset:
                if found is not None:
                    found[0].unlink()
                    log.info(
                        "upload_restarted", app=key.app, version=key.version, discarded=found[2]
                    )
                fd = os.open(dest, flags | os.O_CREAT | os.O_EXCL, 0o600)
                fh = os.fdopen(fd, "wb")
                digest = None if body_hashed else hashlib.sha256()
                return SpoolFile(key, dest, 0, owner, fh, digest, op_id=op_id)
            if found is None or found[1] != owner or found[2] != offset:
                raise offset_error(key, offset, found, owner)
            os.link(found[0], dest, follow_symlinks=False)  # appended in place
        fd = os.open(dest, flags | os.O_APPEND)
        with open(dest, "rb") as prefix:  # the bytes held, hashed once
            digest = hashlib.file_digest(prefix, "sha256")
        log.info("upload_resumed", app=key.app, version=key.version, offset=offset)
        fh = os.fdopen(fd, "wb")
        return SpoolFile(
            key, dest, offset, owner, fh, digest, held=found[0], size=offset, op_id=op_id
        )

    def check_complete(self, spool: SpoolFile, body_sha256: bytes | None = None) -> None:
        """The whole file is the package the key names (``body_sha256``: the SHA-256 of the
        bytes written, for a spool opened with ``body_hashed``).

        Raises:
            DigestMismatchError: ``package_digest``; the caller discards the upload.
        """
        if not hmac.compare_digest(spool.sha256(body_sha256), spool.key.sha256):
            done = (
                f"the {spool.offset} bytes held before this request were kept: resume at offset "
                f"{spool.offset} with the package's own bytes, or upload it again from offset 0"
                if spool.offset
                else "nothing was kept: upload the package again"
            )
            raise DigestMismatchError(
                f"the uploaded package ({spool.size} bytes) does not have the SHA-256 the "
                f"request named ({spool.key.sha256[:16]}…); {done}",
                code="package_digest",
            )

    async def complete(self, spool: SpoolFile) -> None:
        """The body arrived whole: close the file; it now belongs to the stage operation (the
        resume name of a resumed upload goes)."""

        def close() -> None:
            spool.close()
            if spool.held is not None:
                spool.held.unlink(missing_ok=True)

        await asyncio.to_thread(close)
        taken = (spool.key, spool.owner)
        self._taken[taken] = spool.op_id  # before the key is free: a probe never sees a gap
        self._taken.move_to_end(taken)
        while len(self._taken) > TAKEN_KEEP:
            self._taken.popitem(last=False)
        self._settle(spool)

    async def rewind(self, spool: SpoolFile) -> int:
        """The body does not complete the package: cut it off, keep what was held before it.

        Returns:
            The bytes kept (0 for an upload from offset 0: its file is removed).
        """
        if spool.settled:
            return 0
        if not spool.offset:
            await self.discard(spool)
            return 0

        def cut() -> None:
            spool.close()
            os.truncate(spool.path, spool.offset)
            spool.size = spool.offset

        await asyncio.to_thread(cut)
        return await self.keep(spool)

    async def discard(self, spool: SpoolFile) -> None:
        """Remove the upload's file (a refusal, or the end of its operation). Idempotent."""
        if spool.settled:
            return

        def remove() -> None:
            spool.close()
            spool.path.unlink(missing_ok=True)
            if spool.held is not None:
                spool.held.unlink(missing_ok=True)

        await asyncio.to_thread(remove)
        self._settle(spool)

    async def keep(self, spool: SpoolFile) -> int:
        """Keep what arrived for a resume (within the limits): the body broke off, or the whole
        package arrived but could not be staged now (its app became busy).

        Returns:
            The bytes kept (0: nothing was, the limits do not allow it).
        """
        if spool.settled:
            return 0
        try:
            kept = await asyncio.to_thread(self._keep, spool)
        finally:
            self._settle(spool)
        if kept:  # once settled: the sweep leaves partials being received alone
            await asyncio.to_thread(self.sweep)
        return kept

    def _keep(self, spool: SpoolFile) -> int:
        spool.close(fsync=True)
        limits = self._limits()
        key = spool.key
        folder = self.resume_dir / key.app
        with self._lock:
            if spool.held is None:
                folder.mkdir(mode=0o700, parents=True, exist_ok=True)
            refused = self.partials.app_dir(key.app) is None  # a symlink there: never followed
            if refused or not limits.per_app or not spool.size or spool.size > limits.max_bytes:
                spool.path.unlink(missing_ok=True)
                if spool.held is not None:
                    spool.held.unlink(missing_ok=True)
                log.info(
                    "upload_not_kept",
                    app=key.app,
                    version=key.version,
                    bytes=spool.size,
                    reason="not_a_directory" if refused else "limits",
                )
                return 0
            if spool.held is not None and spool.held.exists():  # appended in place
                spool.path.unlink()
            else:
                os.replace(spool.path, folder / key.filename(spool.owner))
            fsync_dir(folder)
        log.info(
            "upload_kept",
            app=key.app,
            version=key.version,
            sha256=key.sha256,
            bytes=spool.size,
            expires_in_s=limits.ttl_s,
        )
        return spool.size

    def _settle(self, spool: SpoolFile) -> None:
        spool.settled = True
        self._busy.discard(spool.key)

    # ------------------------------------------------------------------ resume/ (the store's)
    def prepare(self) -> None:
        """Create ``resume/`` (mode 0700) and sweep it. Blocking."""
        self.partials.prepare()

    def sweep(self, now: float | None = None) -> list[str]:
        """:meth:`ResumeStore.sweep` (blocking)."""
        return self.partials.sweep(now)

    async def sweep_loop(self, stop: asyncio.Event) -> None:
        await self.partials.sweep_loop(stop)
