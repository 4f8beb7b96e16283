"""Stage workers: the daemon's CPU-heavy stage work (manifest parse and trust decision,
extraction, sealing) in a child process with its own GIL, so the event loop stays responsive
while a large release stages (docs/design.md, "Stage worker")."""

from __future__ import annotations

from cutover.agent.worker.process import WORKER_DIED, WorkerPool, WorkerProcess
from cutover.agent.worker.remote import ChildStageWork

__all__ = ["WORKER_DIED", "ChildStageWork", "WorkerPool", "WorkerProcess"]
