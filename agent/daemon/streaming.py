"""Streaming stage: extract an uploaded package while its bytes are still arriving.

An upload+stage then costs about max(transfer, extraction) instead of their sum
(docs/operations.md, "Streaming stage"). Rules:

* **Only chunked packages stream.** The container puts the manifest and signatures first
  (:func:`agent.package.container.read_head`); the extraction thread waits for them, then takes
  the full trust decision (:func:`agent.trust.policy.verify_release`: signatures and threshold,
  approvals, app and version, expiry, immutability and downgrade against the app's state as read
  now) **before** it extracts a byte. A manifest without ``payload.chunks``, a refusal, or a
  version already known: nothing is extracted, and the ordinary stage after the upload decides
  and reports exactly as without streaming.
* **Signed bytes only.** The payload is read from the spool file only up to what the upload has
  written, and each chunk is checked against its signed digest before the decompressor sees it
  (:mod:`agent.extract`). The request's signed ``Content-Digest`` is still checked when the body
  ends; a mismatch (or any failed upload) discards the tree.
* **No lock, no app state.** The tree goes to ``<root>/.cutover/streaming/<operation id>/``,
  which only the daemon uses: recovery under the app lock never touches it, and the daemon
  empties it at start (:func:`clear_stale`). So an upload still reserves the app only once its
  bytes are spooled (issue 14 item 7): while they trickle in, other operations proceed.
* **The stage decides.** The stage operation, under the app lock, re-reads and re-verifies the
  complete spooled package; it takes the tree (a rename into ``incoming/``) only if the tree was
  extracted completely from a manifest with that same digest (:meth:`StreamingStage.claim`).
  Otherwise, or after any failure of the streaming extraction, it discards the tree and
  extracts from the spool as usual, so every refusal is the ordinary stage's.
* **Not when the host can do better.** A delta upload (``delta.json``), a thin package
  (``payload.base``), or an app whose releases the stage could take unchanged files from
  (``reuse`` other than ``off`` and a release installed: agent/extract/reuse.py) stages as usual:
  the streaming extraction writes every file from the payload.
* **Retention by disk first.** It extracts only a release that fits above the app's
  ``min_free_bytes`` / ``min_free_pct`` without pruning; one that needs room is left to the
  stage, which prunes under the lock before writing (agent/host/diskspace.py). A claimed tree
  already holds its space, so the stage does not make room for it again.
* **Bounded.** One streaming extraction per app at a time (another upload stages as usual);
  it runs on its own thread (never the shared worker pool, whose threads write the upload).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import structlog

from cutover.agent.config import LoadedConfig
from cutover.agent.errors import StorageError
from cutover.agent.extract.extractor import ExtractStats, extract_payload
from cutover.agent.host.diskspace import DiskRule, space_needed, statvfs_probe
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import StateFile
from cutover.agent.host.trash import remove_tree
from cutover.agent.package.container import read_head
from cutover.agent.trust.policy import HostHistory, verify_release

__all__ = ["SpoolFeed", "StreamingStage", "clear_stale", "streaming_dir"]

log = structlog.get_logger(__name__)

_STREAMING: Final = "streaming"
_active: set[Path] = set()  # app roots with a streaming extraction running (one each)


def streaming_dir(layout: Layout) -> Path:
    """``<root>/.cutover/streaming``: the daemon's own trees of uploads still arriving."""
    return layout.meta / _STREAMING


def clear_stale(layout: Layout) -> None:
    """Remove what a previous daemon left in the streaming directory (it is the only user)."""
    d = streaming_dir(layout)
    if d.is_dir():
        for entry in d.iterdir():
            remove_tree(entry)


class _AbortedError(Exception):
    """The upload ended without a complete body: the extraction stops and removes its tree."""


class SpoolFeed:
    """The spool file as the upload writes it: a blocking, seekable reader for the extraction
    thread that never reads past what was written (and flushed) so far.

    The writer side (:meth:`advance`, :meth:`finish`, :meth:`abort`) is called on the event loop;
    the reader side (:meth:`read`, :meth:`seek`, :meth:`tell`) on the extraction thread.
    """

    def __init__(self, path: Path) -> None:
        self._path = path
        self._cond = threading.Condition()
        self._written = 0
        self._complete = False
        self._aborted = False
        self._fd = -1
        self._pos = 0

    # -- writer side
    def advance(self, n: int) -> None:
        with self._cond:
            self._written += n
            self._cond.notify_all()

    def finish(self) -> None:
        """The body is complete: a read past its end is a short read (truncation)."""
        with self._cond:
            self._complete = True
            self._cond.notify_all()

    def abort(self) -> None:
        with self._cond:
            self._aborted = True
            self._cond.notify_all()

    # -- reader side
    def open(self) -> None:
        self._fd = os.open(self._path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self._pos
        elif whence != os.SEEK_SET:
            raise OSError("a spool feed seeks from the start or the current position only")
        self._pos = offset
        return offset

    def read(self, size: int = -1) -> bytes:
        """Up to ``size`` bytes from the current position, waiting until they were written;
        fewer only at the end of a complete body."""
        if size < 0:
            raise OSError("a spool feed reads bounded sizes only")
        with self._cond:
            while not self._aborted and not self._complete and self._written < self._pos + size:
                self._cond.wait()
            if self._aborted:
                raise _AbortedError("the upload ended before its body was complete")
            n = max(0, min(size, self._written - self._pos))
        out = bytearray()
        while len(out) < n:
            piece = os.pread(self._fd, n - len(out), self._pos + len(out))
            if not piece:
                break
            out += piece
        self._pos += len(out)
        return bytes(out)


class StreamingStage:
    """One upload's streaming extraction (see the module docstring)."""

    def __init__(self, cfg: LoadedConfig, app: str, version: str, op_id: str, spool: Path) -> None:
        section = cfg.apps[app]
        self._layout = Layout(section.root)
        self._policy = cfg.policies[app]
        self._allow_downgrade = section.allow_downgrade
        self._reuse = section.reuse
        self._min_free_bytes, self._min_free_pct = section.min_free_bytes, section.min_free_pct
        self._app, self._version = app, version
        self.feed = SpoolFeed(spool)
        self.tree = streaming_dir(self._layout) / op_id
        self.digest: str | None = None  # manifest digest of a completely extracted tree
        self.stats: ExtractStats | None = None
        self._done: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._claimed = False
        self._thread = threading.Thread(target=self._run, name="cutover-stream-stage", daemon=True)

    @classmethod
    def start(
        cls, cfg: LoadedConfig, app: str, version: str, op_id: str, spool: Path
    ) -> StreamingStage | None:
        """Start streaming ``app``'s upload from ``spool``, or None (disabled, or one runs)."""
        if not cfg.agent.stream_uploads or app not in cfg.apps:
            return None
        root = cfg.apps[app].root
        if root in _active:
            return None
        stream = cls(cfg, app, version, op_id, spool)
        _active.add(root)
        try:
            stream._thread.start()
        except BaseException:
            _active.discard(root)
            raise
        return stream

    def _run(self) -> None:
        try:
            self.feed.open()
            parts = read_head(self.feed)  # type: ignore[arg-type]  # a file-like reader
            if parts.delta_bytes is not None:
                return  # a delta upload: its payload is thin, described by delta.json
            state = StateFile(self._layout.state_file, self._app).load()
            if self._reuse != "off" and state.installed():
                return  # the stage takes files the host holds from its releases (content index)
            verified = verify_release(
                parts.manifest_bytes,
                parts.signatures_bytes,
                self._policy,
                expected_version=self._version,
                history=HostHistory(
                    known_digests=dict(state.known_digests),
                    highest_version=state.highest_version,
                    allow_downgrade=self._allow_downgrade,
                ),
                now=datetime.now(UTC),
            )
            payload = verified.manifest.payload
            if verified.already_known or payload.chunks is None or payload.base is not None:
                return  # nothing to gain, or nothing to check chunks against: stage as usual
            rule = DiskRule(self._min_free_bytes, self._min_free_pct)
            need = space_needed(verified.manifest)
            if rule.active and rule.shortfall(statvfs_probe(self._layout.root), need):
                # retention by disk must prune first, under the lock: the stage does that
                raise StorageError("the release fits only after pruning", code="insufficient_space")
            self.tree.parent.mkdir(mode=0o700, exist_ok=True)
            self.stats = extract_payload(self.feed, parts, verified.manifest, self.tree)  # type: ignore[arg-type]
            self.digest = verified.digest
        except BaseException as exc:  # the stage decides and reports; this only falls back
            log.info(
                "stream_stage_fallback",
                app=self._app,
                version=self._version,
                reason=str(exc)[:500] or type(exc).__name__,
            )
        finally:
            self.feed.close()
            _active.discard(self._layout.root)
            self._done.set_result(None)

    async def _wait(self) -> None:
        await asyncio.wrap_future(self._done)

    async def claim(self, digest: str, dest: Path) -> ExtractStats | None:
        """Move the extracted tree to ``dest`` if it is complete and of the manifest ``digest``
        (the one the stage verified under the lock); otherwise discard it. Call after the body
        was complete (:meth:`SpoolFeed.finish`).

        Returns:
            What was extracted, if ``dest`` now holds the verified tree; else None.
        """
        await self._wait()
        if self.digest is None or self.digest != digest or self.stats is None:
            await self.discard()
            return None
        await asyncio.to_thread(os.rename, self.tree, dest)
        self._claimed = True
        log.info("stream_stage_claimed", app=self._app, version=self._version)
        return self.stats

    async def discard(self) -> None:
        """Stop the extraction (if still running) and remove its tree, unless claimed."""
        self.feed.abort()
        await self._wait()
        if not self._claimed:
            await asyncio.to_thread(remove_tree, self.tree)
