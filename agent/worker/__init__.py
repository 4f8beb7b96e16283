"""Stage workers: the daemon's CPU-heavy stage work (manifest parse and trust decision,
extraction, sealing) in a child process with its own GIL, so the event loop stays responsive
while a large release stages (docs/design.md, "Stage worker")."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.worker.process import WORKER_DIED as WORKER_DIED
    from cutover.agent.worker.process import WorkerPool as WorkerPool
    from cutover.agent.worker.process import WorkerProcess as WorkerProcess
    from cutover.agent.worker.remote import ChildStageWork as ChildStageWork

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
