"""Stage workers: the daemon's CPU-heavy stage work (manifest parse and trust decision,
extraction, sealing) in a child process with its own GIL, so the event loop stays responsive
while a large release stages (docs/design.md, "Stage worker")."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.worker.process import WORKER_DIED, WorkerPool, WorkerProcess
    from cutover.agent.worker.remote import ChildStageWork

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.worker.process": (
        "WORKER_DIED",
        "WorkerPool",
        "WorkerProcess",
    ),
    "cutover.agent.worker.remote": ("ChildStageWork",),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = ["WORKER_DIED", "ChildStageWork", "WorkerPool", "WorkerProcess"]
