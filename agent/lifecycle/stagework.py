"""The CPU-heavy part of a stage, behind one interface: parse and verify the manifest, extract
the payload, record what stage hooks added, seal the tree read-only.

:class:`StageJob` is that work, synchronous and without the app's state file or journal (it
writes only the extraction tree under ``incoming/`` and, sealing, the modes of the release it is
given). :class:`~agent.lifecycle.stage.Stage` drives it through a :class:`StageWork`:

* :class:`LocalStageWork` runs the job on a worker thread of this process (the on-host CLI: no
  API to keep responsive, and no child process to start).
* the daemon's runs it in a child process with its own GIL (agent/worker/), so parsing a 20,000-
  entry manifest and running the Python extractor never stall the event loop
  (docs/design.md, "Stage worker").

Either way the stage sees a :class:`StageHead`: the verified release (from a child, its manifest
carries every field but the file list, which stays with the job) and the two figures of the
file list the stage needs (bytes to make room for, bytes to report progress against).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO, Protocol, TypeVar

from cutover.agent.errors import StateError
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.host import installer
from cutover.agent.host.diskspace import space_needed
from cutover.agent.host.drift import record_inventory
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState
from cutover.agent.package.container import PackageParts, open_package
from cutover.agent.trust.policy import HostHistory, TrustPolicy, VerifiedRelease, verify_release

__all__ = ["LocalStageWork", "StageHead", "StageJob", "StageWork", "StageWorkFactory"]

_T = TypeVar("_T")


@dataclass(frozen=True)
class StageHead:
    """What the stage needs of a verified release besides its file list.

    ``verified.manifest.files`` is the whole list in this process (:class:`LocalStageWork`) and
    empty from a child: never read it in the stage; ask the job (extract, record_inventory).
    """

    verified: VerifiedRelease
    space_needed: int  # agent.host.diskspace.space_needed of the manifest
    total_bytes: int  # Manifest.total_file_bytes


class StageJob:
    """One stage's work on one package (blocking; see the module docstring).

    ``streamed``: the release a stream worker verified from this package while it arrived
    (agent/worker/streamjob.py). :meth:`verify` still takes the whole trust decision on the
    package as it now is, with the policy and history it is given; it only skips parsing the
    manifest again when the bytes it reads are exactly the streamed ones
    (:func:`~agent.trust.policy.verify_release`'s ``earlier``).
    """

    def __init__(self, package: Path, streamed: VerifiedRelease | None = None) -> None:
        self._package = package
        self._streamed = streamed
        self._fh: BinaryIO | None = None
        self._opened: tuple[PackageParts, BinaryIO, VerifiedRelease] | None = None
        self._placed: dict[str, os.stat_result] = {}  # extract's, for make_readonly

    def verify(
        self, policy: TrustPolicy, history: HostHistory, expected_version: str | None
    ) -> StageHead:
        """Open the package and take the trust decision (:func:`verify_release`)."""
        parts, self._fh = open_package(self._package)
        verified = verify_release(
            parts.manifest_bytes,
            parts.signatures_bytes,
            policy,
            expected_version=expected_version,
            history=history,
            now=datetime.now(UTC),
            earlier=self._streamed,
        )
        self._streamed = None  # decided once per job
        self._opened = (parts, self._fh, verified)
        manifest = verified.manifest
        return StageHead(verified, space_needed(manifest), manifest.total_file_bytes())

    def _release(self) -> tuple[PackageParts, BinaryIO, VerifiedRelease]:
        if self._opened is None:
            raise StateError("the stage job has no verified release: verify comes first")
        return self._opened

    def extract(
        self,
        layout: Layout,
        dest: Path,
        state: AppState | None,
        reuse: str,
        progress: Callable[[int], None] | None = None,
    ) -> ExtractStats:
        """Extract the verified payload into ``dest`` (under ``incoming/``); the extractor
        removes its partial tree on any failure."""
        parts, fh, verified = self._release()
        if fh.closed:
            raise StateError("the stage job already released its package: extract comes first")
        self._placed = {}
        _, stats = installer.extract_to_incoming(
            layout,
            fh,
            parts,
            verified,
            progress,
            state=state,
            reuse=reuse,
            dest=dest,
            placed=self._placed,
        )
        return stats

    def release_package(self) -> None:
        """Close the package: the tree is extracted (or was claimed), and what the job still
        needs of it (the verified manifest) is in memory. A daemon removes its spool right
        after, so no descriptor may keep its pages alive (docs/lifecycle.md §1)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def record_inventory(self, layout: Layout, release_dir: Path) -> int:
        """Record the files stage hooks added to ``release_dir`` (agent/host/drift.py)."""
        return record_inventory(layout, release_dir, self._release()[2].manifest)

    def make_readonly(self, layout: Layout, release_dir: Path, *, hooks_ran: bool) -> str | None:
        """Make the installed release read-only and, without stage hooks, seal it
        (:func:`agent.host.installer.seal`); returns the seal's projection digest, if one was
        written (the state record's ``seal_sha256``)."""
        report = installer.seal(
            layout, release_dir, self._release()[2], hooks_ran=hooks_ran, placed=self._placed
        )
        return None if report is None else report.projection

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._opened = None


class StageWork(Protocol):
    """A :class:`StageJob` as the stage awaits it (in a thread, or in a child process)."""

    async def verify(
        self, policy: TrustPolicy, history: HostHistory, expected_version: str | None
    ) -> StageHead: ...

    async def extract(
        self,
        layout: Layout,
        dest: Path,
        state: AppState | None,
        reuse: str,
        progress: Callable[[int], None] | None = None,
    ) -> ExtractStats:
        """Extract into ``dest``; on any failure (a cancellation too) nothing is left there."""
        ...

    async def release_package(self) -> None:
        """The job is done reading the package (StageJob.release_package)."""
        ...

    async def record_inventory(self, layout: Layout, release_dir: Path) -> int: ...

    async def make_readonly(
        self, layout: Layout, release_dir: Path, *, hooks_ran: bool
    ) -> str | None:
        """Read-only, and sealed unless stage hooks ran (StageJob.make_readonly)."""
        ...

    async def close(self) -> None:
        """End the job (a child process is stopped: killed if it is still working)."""
        ...


StageWorkFactory = Callable[[Path], StageWork]  # the package -> its job's runner


async def _to_thread(func: Callable[..., _T], /, *args: object) -> _T:
    """``asyncio.to_thread``, importing asyncio here: a stage worker runs :class:`StageJob`
    without an event loop, and imports only the job path (agent/worker/child.py)."""
    import asyncio

    return await asyncio.to_thread(func, *args)


class LocalStageWork:
    """The job on worker threads of this process."""

    def __init__(self, package: Path) -> None:
        self._job = StageJob(package)

    async def verify(
        self, policy: TrustPolicy, history: HostHistory, expected_version: str | None
    ) -> StageHead:
        # Parsing and checking a 20,000-entry manifest takes ~0.2 s: never on the loop.
        return await _to_thread(self._job.verify, policy, history, expected_version)

    async def extract(
        self,
        layout: Layout,
        dest: Path,
        state: AppState | None,
        reuse: str,
        progress: Callable[[int], None] | None = None,
    ) -> ExtractStats:
        return await _to_thread(
            functools.partial(self._job.extract, layout, dest, state, reuse, progress)
        )

    async def release_package(self) -> None:
        self._job.release_package()

    async def record_inventory(self, layout: Layout, release_dir: Path) -> int:
        return await _to_thread(self._job.record_inventory, layout, release_dir)

    async def make_readonly(
        self, layout: Layout, release_dir: Path, *, hooks_ran: bool
    ) -> str | None:
        return await _to_thread(
            functools.partial(self._job.make_readonly, layout, release_dir, hooks_ran=hooks_ran)
        )

    async def close(self) -> None:
        self._job.close()
