"""The streaming extraction of an upload still arriving, as a worker runs it (the rules are
agent/daemon/streaming.py's): read the head from the growing spool, take the full trust
decision, extract the payload chunk by chunk as its bytes are written.

:class:`SpoolFeed` is the spool file as the upload writes it: a blocking, seekable reader that
never reads past what the daemon said was written (``{"written": n}`` lines on the worker's
stdin, :func:`pump`).

:func:`stream_extract` also returns the release it verified (None if it verified none): when the
body was complete, the same worker goes on with the upload's stage (agent/worker/child.py), which
decides again under the lock and reuses only its parse of these same manifest bytes
(:class:`~agent.lifecycle.stagework.StageJob`).
"""

from __future__ import annotations

import json
import os
import threading
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from cutover.agent.errors import StorageError
from cutover.agent.extract.extractor import extract_payload
from cutover.agent.host.diskspace import DiskRule, space_needed, statvfs_probe
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import StateFile
from cutover.agent.package.container import read_head
from cutover.agent.trust.policy import HostHistory, VerifiedRelease, verify_release
from cutover.agent.worker.wire import Json, policy_from_wire, stats_to_wire

__all__ = ["AbortedError", "SpoolFeed", "pump", "stream_extract"]


class AbortedError(Exception):
    """The upload ended without a complete body: the extraction stops and removes its tree."""


class SpoolFeed:
    """The growing spool file (see the module docstring).

    The writer side (:meth:`advance`, :meth:`finish`, :meth:`abort`) is called by the stdin
    pump thread; the reader side (:meth:`read`, :meth:`seek`, :meth:`tell`) by the extraction.
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
    def advance_to(self, written: int) -> None:
        with self._cond:
            self._written = max(self._written, written)
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

    @property
    def complete(self) -> bool:
        """The daemon said the body is complete (and never that it aborted)."""
        with self._cond:
            return self._complete and not self._aborted

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
                raise AbortedError("the upload ended before its body was complete")
            n = max(0, min(size, self._written - self._pos))
        data = os.pread(self._fd, n, self._pos)  # whole, but for a short read of the file
        if 0 < len(data) < n:
            out = bytearray(data)
            while len(out) < n:
                piece = os.pread(self._fd, n - len(out), self._pos + len(out))
                if not piece:
                    break
                out += piece
            data = bytes(out)
        self._pos += len(data)
        return data


def pump(lines: BinaryIO, feed: SpoolFeed) -> None:
    """Drive ``feed`` from the daemon's lines until ``complete`` or ``abort`` (or EOF: the
    daemon is gone or gave up, which aborts)."""
    for line in lines:
        msg = json.loads(line)
        if "written" in msg:
            feed.advance_to(int(msg["written"]))
        elif msg.get("complete"):
            feed.finish()
            return
        else:
            break
    feed.abort()


def stream_extract(job: Json, feed: SpoolFeed) -> tuple[Json, VerifiedRelease | None]:
    """Extract the upload into ``job["tree"]`` if its signed manifest allows streaming.

    Returns:
        The answer: ``{"digest", "stats"}`` of a completely extracted tree, or
        ``{"skipped": why}`` when the ordinary stage must do it (a delta, reuse, a version
        already known, no chunks, a thin package); and the release verified on the way, if any
        (see the module docstring).

    Raises:
        Whatever refused it (the daemon only logs it: the stage decides and reports).
    """
    layout = Layout(Path(job["root"]))
    feed.open()
    try:
        parts = read_head(feed)  # type: ignore[arg-type]  # a file-like reader
        state = StateFile(layout.state_file, job["app"]).load()
        # Verified while the body arrives even when the stage extracts: the stage (this worker)
        # then reuses this parse of the very same manifest bytes and runs every check again.
        verified = verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            policy_from_wire(job["policy"]),
            expected_version=job["version"],
            history=HostHistory(
                known_digests=dict(state.known_digests),
                highest_version=state.highest_version,
                allow_downgrade=job["allow_downgrade"],
            ),
            now=datetime.now(UTC),
        )
        if parts.delta_bytes is not None:  # its payload is thin, described by delta.json
            return {"skipped": "a delta upload"}, verified
        if job["reuse"] != "off" and state.installed():
            # the stage takes files the host holds from its releases (content index)
            return {"skipped": "reuse: the stage takes files from installed releases"}, verified
        payload = verified.manifest.payload
        if verified.already_known or payload.chunks is None or payload.base is not None:
            # nothing to gain, or nothing to check chunks against: stage as usual
            return {"skipped": "known version, unchunked or thin package"}, verified
        rule = DiskRule(job["min_free_bytes"], job["min_free_pct"])
        need = space_needed(verified.manifest)
        if rule.active and rule.shortfall(statvfs_probe(layout.root), need):
            # retention by disk must prune first, under the lock: the stage does that
            raise StorageError("the release fits only after pruning", code="insufficient_space")
        tree = Path(job["tree"])
        tree.parent.mkdir(mode=0o700, exist_ok=True)
        stats = extract_payload(feed, parts, verified.manifest, tree)  # type: ignore[arg-type]
        return {"digest": verified.digest, "stats": stats_to_wire(stats)}, verified
    finally:
        feed.close()
