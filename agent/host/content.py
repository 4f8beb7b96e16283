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

What the index says is a *candidate*: whoever reuses a file re-checks the file itself
(:mod:`agent.extract.reuse`: type, size, SHA-256, never through a symlink). The index only avoids
shipping bytes; it never decides what a release contains (the signed manifest does).

Cost: one strict parse of a seal (or one ``json.loads`` of a kept manifest) per release and a
dict insert per file, no tree walk (``bench/delta.py`` prints it for 5 releases x 20,000 files).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable

from cutover.agent._util.lazylog import get_logger
from cutover.agent.extract.reuse import Candidate
from cutover.agent.host.layout import Layout
from cutover.agent.host.seal import load_seal
from cutover.agent.host.state import AppState

__all__ = ["ContentIndex", "ContentSource"]

log = get_logger(__name__)


ContentSource = Candidate  # (version, path, size, mode): what the reuser takes


class ContentIndex:
    """SHA-256 → installed files with that content (newest release first)."""

    def __init__(self, by_digest: dict[str, list[ContentSource]] | None = None) -> None:
        self._by_digest = by_digest or {}

    @classmethod
    def build(cls, layout: Layout, state: AppState, *, exclude: str | None = None) -> ContentIndex:
        """The index of every installed, manifest-backed release of ``state``.

        Args:
            layout: the app root.
            state: the app's state (read under the lock, or a snapshot for a read-only answer).
            exclude: a version left out (the one being staged).
        """
        by_digest: dict[str, list[ContentSource]] = {}
        for rec in sorted(state.installed(), key=lambda r: -r.seq):
            if rec.adopted or rec.version == exclude or not rec.manifest_digest:
                continue
            if not layout.release(rec.version).is_dir():
                continue
            version = rec.version
            seal = load_seal(layout, rec)
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
                continue
            path = layout.kept_manifest(rec.version)
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("content_index_skipped", version=rec.version, reason=exc.strerror)
                continue
            if hashlib.sha256(data).hexdigest() != rec.manifest_digest:
                log.warning("content_index_skipped", version=rec.version, reason="manifest drift")
                continue
            try:
                files = json.loads(data)["files"]
            except (ValueError, KeyError, TypeError):
                continue
            for e in files:
                digest = e.get("sha256")
                if digest is not None:
                    source = ContentSource(version, e["path"], e["size"], e["mode"])
                    by_digest.setdefault(digest, []).append(source)
        return cls(by_digest)

    def __contains__(self, digest: object) -> bool:
        return digest in self._by_digest

    def __len__(self) -> int:
        return len(self._by_digest)

    def sources(self, digest: str) -> list[ContentSource]:
        """Installed files with content ``digest`` (newest release first; may be empty)."""
        return self._by_digest.get(digest, [])

    def missing(self, digests: Iterable[str]) -> list[str]:
        """Those of ``digests`` the host holds no file of, in the order given."""
        return [d for d in digests if d not in self._by_digest]
