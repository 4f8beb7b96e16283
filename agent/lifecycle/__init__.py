"""The release lifecycle of one app: stage, activate, rollback and housekeeping."""

from __future__ import annotations

from cutover.agent.lifecycle.manager import AppManager, EventSink, OpResult

__all__ = [
    "AppManager",
    "EventSink",
    "OpResult",
]
