"""The content index of one app root: which file contents (SHA-256) the host already holds.

Built per installed release from its seal (``.cutover/manifests/<version>.seal.json``,
:mod:`agent.host.seal`: the manifest's files with their identities when sealed, a cache checked
against the release record) or, without a usable seal, from the signed manifest the host keeps
(``<version>.json``, :mod:`agent.host.kept`); never from the release trees:

* a release counts only when its state record says it is installed (fully staged and verified),
  it is not adopted (no signed manifest), its directory exists, and its seal or kept manifest
  matches the manifest digest recorded at staging (an edited manifest is skipped and logged,
  never believed); a pruned or deleted release is not installed, and its seal is gone with it;
* per regular file it records (version, path, size, mode, sealed identity or None) under the
  file's SHA-256.

**Read only as far as needed.** :meth:`ContentIndex.build` only lists the releases that qualify
(newest first); each is read (seal or kept manifest) when a lookup has not found what it wants in
the releases read so far. A delta stage looks up the files its thin payload lacks, which the
newest release nearly always holds all of: one seal is read, not one per installed release.
:meth:`~ContentIndex.sources` keeps reading older releases while its caller keeps asking (every
candidate so far failed its check); :meth:`~ContentIndex.missing` stops once every digest asked
for is found. The qualification above is re-checked when a release is read, so a lookup never
offers a release pruned since the index was built, nor rows of a seal that is stale by then.

What the index says is a *candidate*: whoever reuses a file re-checks the file itself
(:mod:`agent.extract.reuse`: type, size, SHA-256 or sealed identity, never through a symlink).
The index only avoids shipping bytes; it never decides what a release contains (the signed
manifest does).

Cost: one strict parse of a seal (or one ``json.loads`` of a kept manifest) per release read and a
dict insert per file, no tree walk (``bench/delta.py`` prints it for 5 releases x 20,000 files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Iterator

from cutover.agent._util.gcpause import gc_paused
from cutover.agent._util.lazylog import get_logger
from cutover.agent.extract.reuse import Candidate
from cutover.agent.host.layout import Layout
from cutover.agent.host.seal import load_seal
from cutover.agent.host.state import AppState, ReleaseRecord

__all__ = ["ContentIndex", "ContentSource"]

log = get_logger(__name__)


ContentSource = Candidate  # (version, path, size, mode): what the reuser takes


class ContentIndex:
    """SHA-256 → installed files with that content (newest release first), read release by
    release as lookups need them (see the module docstring)."""

    def __init__(
        self,
        by_digest: dict[str, list[ContentSource]] | None = None,
        layout: Layout | None = None,
        pending: Iterable[ReleaseRecord] = (),
    ) -> None:
        self._by_digest = by_digest or {}
        self._layout = layout
        self._pending = list(pending)  # newest first; popped from the front as they are read
        self.read: list[str] = []  # versions read so far, in order (for tests and the bench)

    @classmethod
    def build(cls, layout: Layout, state: AppState, *, exclude: str | None = None) -> ContentIndex:
        """The index of every installed, manifest-backed release of ``state`` (none read yet).

        Args:
            layout: the app root.
            state: the app's state (read under the lock, or a snapshot for a read-only answer).
            exclude: a version left out (the one being staged).
        """
        pending = [
            rec
            for rec in sorted(state.installed(), key=lambda r: -r.seq)
            if not rec.adopted and rec.version != exclude and rec.manifest_digest
        ]
        return cls(layout=layout, pending=pending)

    def empty(self) -> bool:
        """No release is left to read and none read held a file: nothing can be reused."""
        return not self._by_digest and not self._pending

    def read_all(self) -> ContentIndex:
        """Read every release not read yet (returns self)."""
        while self._read_next():
            pass
        return self

    def _read_next(self) -> bool:
        """Read the next release into the index; False if none is left."""
        if not self._pending or self._layout is None:
            return False
        rec = self._pending.pop(0)
        with gc_paused():  # 20,000 rows become long-lived tuples: no collector scans meanwhile
            self._add(self._layout, rec)
        self.read.append(rec.version)
        return True

    def _add(self, layout: Layout, rec: ReleaseRecord) -> None:
        if not layout.release(rec.version).is_dir():  # pruned or deleted since: never offered
            return
        by_digest = self._by_digest
        version = rec.version
        seal = load_seal(layout, rec)  # re-checked against the record now, when it is read
        if seal is not None:  # 20,000 rows per release: kept lean
            dev, make, get = seal.dev, tuple.__new__, by_digest.get
            for rel, digest, size, mode, ino, mtime, ctime in seal.files:
                ident = (dev, ino, size, mtime, ctime) if ino > 0 else None
                source = make(ContentSource, (version, rel, size, mode, ident))
                same = get(digest)
                if same is None:
                    by_digest[digest] = [source]
                else:
                    same.append(source)
            return
        path = layout.kept_manifest(rec.version)
        try:
            data = path.read_bytes()
        except OSError as exc:
            log.warning("content_index_skipped", version=rec.version, reason=exc.strerror)
            return
        if hashlib.sha256(data).hexdigest() != rec.manifest_digest:
            log.warning("content_index_skipped", version=rec.version, reason="manifest drift")
            return
        try:
            files = json.loads(data)["files"]
        except (ValueError, KeyError, TypeError):
            return
        for e in files:
            digest = e.get("sha256")
            if digest is not None:
                source = ContentSource(version, e["path"], e["size"], e["mode"])
                by_digest.setdefault(digest, []).append(source)

    def __contains__(self, digest: object) -> bool:
        """The host holds a file with this content (reads releases until one does, or none is
        left)."""
        while digest not in self._by_digest:
            if not self._read_next():
                return False
        return True

    def sources(self, digest: str) -> Iterator[ContentSource]:
        """Installed files with content ``digest``, newest release first (may be none). Older
        releases are read only while the caller asks for more than those read so far hold."""
        i = 0
        while True:
            same = self._by_digest.get(digest, ())
            while i < len(same):  # a release read meanwhile appends its own at the end
                yield same[i]
                i += 1
            if not self._read_next():
                return

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Those of ``digests`` the host holds no file of, in the order given (stops reading
        releases once every one is found)."""
        wanted = list(digests)
        left = {d for d in wanted if d not in self._by_digest}
        while left and self._read_next():
            left = {d for d in left if d not in self._by_digest}
        return [d for d in wanted if d in left]
