"""Streaming stage: extract an uploaded package while its bytes are still arriving.

An upload+stage then costs about max(transfer, extraction) instead of their sum
(docs/operations.md, "Streaming stage"). Rules:

* **Only chunked packages stream.** The container puts the manifest and signatures first
  (:func:`agent.package.container.read_head`); the extraction waits for them, then takes
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
  empties it at start (:func:`clear_stale`, once no worker of a killed daemon holds
  ``stream-worker.lock``: agent/host/workerlock.py). So an upload still reserves the app only once its
  bytes are spooled (issue 14 item 7): while they trickle in, other operations proceed.
* **The stage decides.** The stage operation, under the app lock, re-reads and re-verifies the
  complete spooled package; it takes the tree (a rename into ``incoming/``) only if the tree was
  extracted completely from a manifest with that same digest (:meth:`StreamingStage.claim`).
  Otherwise, or after any failure of the streaming extraction, it discards the tree and
  extracts from the spool as usual, so every refusal is the ordinary stage's.
* **One worker per upload.** A stream worker that answered (extracted, or skipped) and saw the
  body complete goes on as the stage's worker (:meth:`StreamingStage.stage_work`): it takes the
  stage's trust decision again with the policy and host history read under the lock, reusing
  only its parse of the same manifest bytes (signatures, policy, approvals, expiry,
  immutability and downgrade are all checked again), then seals the release. One that failed,
  or was killed, is not: the stage takes a fresh worker from the pool.
* **Not when the host can do better.** A delta upload (``delta.json``), a thin package
  (``payload.base``), or an app whose releases the stage could take unchanged files from
  (``reuse`` other than ``off`` and a release installed: agent/extract/reuse.py) stages as usual:
  the streaming extraction writes every file from the payload.
* **Retention by disk first.** It extracts only a release that fits above the app's
  ``min_free_bytes`` / ``min_free_pct`` without pruning; one that needs room is left to the
  stage, which prunes under the lock before writing (agent/host/diskspace.py). A claimed tree
  already holds its space, so the stage does not make room for it again.
* **Bounded.** One streaming extraction per app at a time (another upload stages as usual).
* **Off the daemon's GIL.** The extraction runs in a stage worker process (agent/worker/,
  :func:`~agent.worker.streamjob.stream_extract`), which reads the spool up to what this side
  says was written (``{"written": n}`` lines on its stdin): the event loop receiving the body
  shares its GIL only with the thread writing the spool. The worker writes only the tree in
  ``streaming/``, fed only once it said it holds ``stream-worker.lock``; it dies with the daemon
  (``PR_SET_PDEATHSIG``) and is killed when the upload fails or the stage discards the tree.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from pathlib import Path
from typing import Final

import structlog

from cutover.agent.config import LoadedConfig
from cutover.agent.errors import CutoverError
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.host import workerlock
from cutover.agent.host.layout import Layout
from cutover.agent.host.trash import remove_tree
from cutover.agent.lifecycle.stagework import StageWork
from cutover.agent.worker.process import WorkerPool, WorkerProcess
from cutover.agent.worker.remote import ChildStageWork
from cutover.agent.worker.wire import Json, error_from_wire, policy_to_wire, stats_from_wire

__all__ = ["StreamFeed", "StreamingStage", "clear_stale", "streaming_dir"]

log = structlog.get_logger(__name__)

_STREAMING: Final = "streaming"
_active: set[Path] = set()  # app roots with a streaming extraction running (one each)


def streaming_dir(layout: Layout) -> Path:
    """``<root>/.cutover/streaming``: the daemon's own trees of uploads still arriving."""
    return layout.meta / _STREAMING


def clear_stale(layout: Layout, stop: threading.Event | None = None) -> None:
    """Remove what a previous daemon left in the streaming directory (it is the only user),
    once no streaming worker of that daemon still writes there (agent/host/workerlock.py).
    Setting ``stop`` (the awaiting task was cancelled) ends the wait for that worker.

    Raises:
        LockedError: such a worker outlived its daemon (named); nothing was removed.
        WaitStoppedError: ``stop`` was set first; nothing was removed.
    """
    d = streaming_dir(layout)
    if d.is_dir():
        with workerlock.exclusive(layout.stream_worker_lock, stop=stop):
            for entry in d.iterdir():
                remove_tree(entry)


class StreamFeed:
    """How far the spool was written, told to the worker (called on the event loop; the lines
    queue in the pipe's transport, never blocking). Before the worker is there, the last
    figure is kept and sent when it arrives."""

    def __init__(self) -> None:
        self._written = 0
        self._end: str | None = None  # "complete" | "abort"
        self._worker: WorkerProcess | None = None

    def attach(self, worker: WorkerProcess) -> None:
        self._worker = worker
        if self._written:
            self._send({"written": self._written})
        if self._end is not None:
            self._send({self._end: True})

    def detach(self) -> None:
        """The worker answered (or was given up on): nothing more to tell it."""
        self._worker = None

    def _send(self, obj: Json) -> None:
        if self._worker is not None:
            with contextlib.suppress(CutoverError, OSError):  # a dead worker: its end is seen
                self._worker.send(obj)

    def advance(self, n: int) -> None:
        self._written += n
        if self._end is None:
            self._send({"written": self._written})

    def finish(self) -> None:
        """The body is complete: a read past its end is a short read (truncation)."""
        if self._end is None:
            self._end = "complete"
            self._send({"complete": True})

    def abort(self) -> None:
        if self._end is None:
            self._end = "abort"
            self._send({"abort": True})

    @property
    def completed(self) -> bool:
        """The body ended complete (and the worker was told)."""
        return self._end == "complete"


class StreamingStage:
    """One upload's streaming extraction (see the module docstring)."""

    def __init__(
        self, cfg: LoadedConfig, pool: WorkerPool, app: str, version: str, op_id: str, spool: Path
    ) -> None:
        section = cfg.apps[app]
        self._layout = Layout(section.root)
        self._pool = pool
        self._app, self._version = app, version
        self.feed = StreamFeed()
        self.tree = streaming_dir(self._layout) / op_id
        self._job: Json = {
            "job": "stream",
            "spool": str(spool),
            "tree": str(self.tree),
            "root": str(section.root),
            "app": app,
            "version": version,
            "policy": policy_to_wire(cfg.policies[app]),
            "allow_downgrade": section.allow_downgrade,
            "reuse": section.reuse,
            "min_free_bytes": section.min_free_bytes,
            "min_free_pct": section.min_free_pct,
        }
        self.digest: str | None = None  # manifest digest of a completely extracted tree
        self.stats: ExtractStats | None = None
        self.worker_pid: int | None = None
        self._worker: WorkerProcess | None = None
        self._claimed = False
        self._answered = False
        self._kept = False  # answered ok: kept for the stage (adopt)
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def start(
        cls,
        cfg: LoadedConfig,
        pool: WorkerPool | None,
        app: str,
        version: str,
        op_id: str,
        spool: Path,
    ) -> StreamingStage | None:
        """Start streaming ``app``'s upload from ``spool`` (on the event loop), or None
        (disabled, no worker pool, or one runs for the app)."""
        if pool is None or not cfg.agent.stream_uploads or app not in cfg.apps:
            return None
        root = cfg.apps[app].root
        if root in _active:
            return None
        stream = cls(cfg, pool, app, version, op_id, spool)
        _active.add(root)
        stream._task = asyncio.create_task(stream._run(), name=f"stream-stage-{op_id}")
        return stream

    async def _run(self) -> None:
        try:
            self._worker = worker = await self._pool.take()
            self.worker_pid = worker.pid
            worker.doing = f"streaming the upload of {self._app} {self._version}"
            worker.send(self._job)
            held = await worker.receive()  # the worker lock is held: fed only from now on
            if "error" in held:
                raise error_from_wire(held["error"])
            self.feed.attach(worker)
            log.info(
                "stream_stage_started", app=self._app, version=self._version, worker=worker.pid
            )
            msg = await worker.receive()
            self._answered = True
            if "error" in msg:
                raise error_from_wire(msg["error"])
            ok: Json = msg["ok"]
            worker.doing = "done streaming the upload"
            self._kept = True
            if "digest" in ok:
                self.stats = stats_from_wire(ok["stats"])
                self.digest = str(ok["digest"])
                log.info(
                    "stream_stage_extracted",
                    app=self._app,
                    version=self._version,
                    worker=worker.pid,
                )
            else:
                log.info("stream_stage_skipped", app=self._app, reason=ok.get("skipped"))
        except BaseException as exc:  # the stage decides and reports; this only falls back
            log.info(
                "stream_stage_fallback",
                app=self._app,
                version=self._version,
                reason=str(exc)[:500] or type(exc).__name__,
            )
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            _active.discard(self._layout.root)
            if not self._kept:
                self.feed.detach()
                if self._worker is not None:  # done: it exits when told; given up on: killed
                    done = self._worker.close() if self._answered else self._worker.kill()
                    await asyncio.shield(done)
            # kept: it still hears how the body ends, then the stage's job (adopt), or is
            # killed (discard)

    async def _wait(self) -> None:
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._task)

    def stage_work(self, package: Path) -> StageWork:
        """The stage's job, in this upload's worker if it is still there (:meth:`adopt`)."""
        return ChildStageWork(self._pool, package, adopt=self.adopt)

    async def adopt(self) -> WorkerProcess | None:
        """The stream worker, handed over for the stage's job (the caller owns it from now on),
        if it answered ok and the body was complete; else None. Call after the body ended."""
        await self._wait()
        worker = self._worker if self._kept else None
        if worker is None or not worker.alive or not self.feed.completed:
            return None
        self._worker = None
        self.feed.detach()
        log.info("stream_stage_worker_kept", app=self._app, version=self._version, pid=worker.pid)
        return worker

    async def claim(self, digest: str, dest: Path) -> ExtractStats | None:
        """Move the extracted tree to ``dest`` if it is complete and of the manifest ``digest``
        (the one the stage verified under the lock); otherwise discard it. Call after the body
        was complete (:meth:`StreamFeed.finish`).

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
        """Stop the extraction (its worker killed, if still running) and remove its tree,
        unless claimed."""
        self.feed.abort()
        if self._worker is not None:
            await self._worker.kill()
        await self._wait()
        if not self._claimed:
            await asyncio.to_thread(remove_tree, self.tree)
