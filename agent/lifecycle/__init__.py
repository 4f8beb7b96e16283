"""The release lifecycle of one app: a unit of work plus one module per operation (stage,
activate, rollback, housekeeping), given a hook runner and a health runner; crash recovery
executes the plans of :mod:`agent.host.recovery`. :class:`AppManager` is the facade."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.lifecycle.context import AppContext as AppContext
    from cutover.agent.lifecycle.context import EventSink as EventSink
    from cutover.agent.lifecycle.context import OpResult as OpResult
    from cutover.agent.lifecycle.manager import AppManager as AppManager
    from cutover.agent.lifecycle.unit import UnitOfWork as UnitOfWork

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
