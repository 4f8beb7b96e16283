"""The disk side of one app root: layout, state, journal, lock, releases, drift."""

from __future__ import annotations

from cutover.agent.host.journal import Journal
from cutover.agent.host.lock import AppLock
from cutover.agent.host.state import AppState, Pending, ReleaseRecord, ReleaseStatus, utcnow
from cutover.agent.host.store import Layout, ReleaseStore, remove_tree

__all__ = [
    "AppLock",
    "AppState",
    "Journal",
    "Layout",
    "Pending",
    "ReleaseRecord",
    "ReleaseStatus",
    "ReleaseStore",
    "remove_tree",
    "utcnow",
]
