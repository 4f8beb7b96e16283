"""The disk side of one app root: layout, the current link, installation, kept manifests,
shared paths, trash, state and journal (the ledger), lock, drift, the activation phases and the
pure recovery planner. Synchronous and config-free: callers pass plain values."""

from __future__ import annotations

from cutover.agent.host.current import flip, read_current
from cutover.agent.host.drift import find_drift, record_inventory
from cutover.agent.host.journal import Journal, JournalHead
from cutover.agent.host.kept import RuntimeSpec, load_manifest, load_runtime
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.lock import AppLock
from cutover.agent.host.phases import ActivationPhase
from cutover.agent.host.recovery import DiskView, RecoveryPlan, plan_recovery
from cutover.agent.host.state import AppState, Pending, ReleaseRecord, ReleaseStatus, utcnow
from cutover.agent.host.trash import remove_tree

__all__ = [
    "ActivationPhase",
    "AppLock",
    "AppState",
    "DiskView",
    "Journal",
    "JournalHead",
    "Layout",
    "Ledger",
    "Pending",
    "RecoveryPlan",
    "ReleaseRecord",
    "ReleaseStatus",
    "RuntimeSpec",
    "find_drift",
    "flip",
    "load_manifest",
    "load_runtime",
    "plan_recovery",
    "read_current",
    "record_inventory",
    "remove_tree",
    "utcnow",
]
