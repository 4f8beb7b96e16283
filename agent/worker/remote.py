"""A stage's CPU-heavy work in a worker process (:class:`ChildStageWork`), as the daemon's
:class:`~agent.lifecycle.stagework.StageWork`.

The worker parses and verifies the manifest (the same :func:`~agent.trust.policy.verify_release`
against the policy and the host history read under the lock, both sent to it), extracts into the
``incoming/`` directory the stage names, records what stage hooks added and seals the release
read-only. It answers with the manifest's head, digest, signers and stats: this process never
parses the file list. The signed manifest bytes the stage keeps are read here from the package
and must hash to the digest the worker verified.

With ``adopt``, the job goes to the worker that streamed the package while it arrived
(agent/daemon/streaming.py), if it is still there: it verifies again with what it is sent (one
process, and one manifest parse, per streamed upload); otherwise to one from the pool.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path

import structlog

from cutover.agent.errors import InternalError
from cutover.agent.extract.extractor import ExtractStats
from cutover.agent.host.layout import Layout
from cutover.agent.host.state import AppState
from cutover.agent.host.trash import remove_tree
from cutover.agent.lifecycle.stagework import StageHead
from cutover.agent.package.container import open_package
from cutover.agent.trust.policy import HostHistory, TrustPolicy
from cutover.agent.worker.process import WorkerPool, WorkerProcess
from cutover.agent.worker.wire import (
    head_from_wire,
    history_to_wire,
    policy_to_wire,
    stats_from_wire,
)

__all__ = ["ChildStageWork"]

log = structlog.get_logger(__name__)


def _manifest_bytes(package: Path) -> tuple[bytes, str]:
    """The package's manifest bytes and their SHA-256 (blocking)."""
    parts, fh = open_package(package)
    fh.close()
    return parts.manifest_bytes, hashlib.sha256(parts.manifest_bytes).hexdigest()


class ChildStageWork:
    """One stage's job in a worker taken from ``pool`` at the first step."""

    def __init__(
        self,
        pool: WorkerPool,
        package: Path,
        adopt: Callable[[], Awaitable[WorkerProcess | None]] | None = None,
    ) -> None:
        self._pool = pool
        self._package = package
        self._adopt = adopt
        self._worker: WorkerProcess | None = None
        self.pid: int | None = None  # the worker's, once taken
        self._holds = False  # the worker holds the root's worker lock

    async def _request(
        self, obj: dict[str, object], doing: str, progress: Callable[[int], None] | None = None
    ) -> dict[str, object]:
        if self._worker is None:
            raise InternalError("the stage worker was already closed")
        return await self._worker.request(obj, doing, progress)

    async def verify(
        self, policy: TrustPolicy, history: HostHistory, expected_version: str | None
    ) -> StageHead:
        worker = None if self._adopt is None else await self._adopt()
        adopted = worker is not None
        if worker is None:
            worker = await self._pool.take()
        self._worker = worker
        self.pid = worker.pid
        log.info("stage_worker", pid=worker.pid, package=self._package.name, streamed=adopted)
        worker.send({"job": "stage", "package": str(self._package)})
        answer = await self._request(
            {
                "op": "verify",
                "policy": policy_to_wire(policy),
                "history": history_to_wire(history),
                "expected_version": expected_version,
            },
            f"verifying {self._package.name}",
        )
        data, digest = await asyncio.to_thread(_manifest_bytes, self._package)
        if digest != answer["digest"]:  # the spool is the daemon's own: never expected
            raise InternalError(
                f"{self._package} changed while the stage worker verified it "
                f"(manifest {digest[:16]}, verified {str(answer['digest'])[:16]})"
            )
        return head_from_wire(answer, data)

    async def extract(
        self,
        layout: Layout,
        dest: Path,
        state: AppState | None,
        reuse: str,
        progress: Callable[[int], None] | None = None,
    ) -> ExtractStats:
        # The state only matters where files may be taken from installed releases.
        state_json = None if state is None or reuse == "off" else state.model_dump_json()
        try:
            await self._hold(layout)
            answer = await self._request(
                {
                    "op": "extract",
                    "root": str(layout.root),
                    "dest": str(dest),
                    "state": state_json,
                    "reuse": reuse,
                },
                f"extracting into {dest}",
                progress,
            )
        except BaseException:
            # The extractor removes its partial tree on its own errors; a worker that died or
            # that a cancellation stops leaves it: killed first, so nothing writes there now.
            await asyncio.shield(self._abandon(dest))
            raise
        return stats_from_wire(answer)

    async def _hold(self, layout: Layout) -> None:
        """Before the worker's first write into the root (extract, or the inventory and modes of
        a tree its streaming wrote): it holds the root's worker lock (agent/host/workerlock.py),
        so from its answer on no recovery removes a tree it may still write while it lives."""
        if not self._holds:
            await self._request({"op": "hold", "root": str(layout.root)}, "taking the worker lock")
            self._holds = True

    async def _abandon(self, dest: Path) -> None:
        worker, self._worker = self._worker, None
        if worker is not None:
            await worker.kill()
        await asyncio.to_thread(remove_tree, dest)

    async def release_package(self) -> None:
        """The worker closes its descriptor on the package (the daemon then removes its spool)."""
        await self._request({"op": "release"}, f"closing {self._package.name}")

    async def record_inventory(self, layout: Layout, release_dir: Path) -> int:
        await self._hold(layout)
        answer = await self._request(
            {"op": "inventory", "root": str(layout.root), "release_dir": str(release_dir)},
            f"recording the stage hooks' files in {release_dir}",
        )
        return int(str(answer["added"]))

    async def make_readonly(
        self, layout: Layout, release_dir: Path, *, hooks_ran: bool
    ) -> str | None:
        await self._hold(layout)
        answer = await self._request(
            {
                "op": "readonly",
                "root": str(layout.root),
                "release_dir": str(release_dir),
                "hooks_ran": hooks_ran,
            },
            f"making {release_dir} read-only",
        )
        seal = answer["seal"]
        return None if seal is None else str(seal)

    async def close(self) -> None:
        """Stop the worker: it exits when its stdin closes; killed if still working (a
        cancelled or failed stage)."""
        worker, self._worker = self._worker, None
        if worker is None:
            return
        if worker.doing.startswith("done ") or worker.doing == "waiting for a job":
            await worker.close()
        else:
            await worker.kill()
