"""The release lifecycle of one app: a unit of work plus one module per operation (stage,
activate, rollback, housekeeping), given a hook runner and a health runner; crash recovery
executes the plans of :mod:`agent.host.recovery`. :class:`AppManager` is the facade."""

from __future__ import annotations

from cutover.agent.lifecycle.context import AppContext, EventSink, OpResult
from cutover.agent.lifecycle.manager import AppManager
from cutover.agent.lifecycle.unit import UnitOfWork

__all__ = [
    "AppContext",
    "AppManager",
    "EventSink",
    "OpResult",
    "UnitOfWork",
]
