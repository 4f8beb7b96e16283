"""The disk side of one app root: layout, the current link, installation, kept manifests,
shared paths, trash, state and journal (the ledger), lock, drift, the activation phases and the
pure recovery planner. Synchronous (but for the stage workers' lock's cancellable wait) and
config-free: callers pass plain values."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
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

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.agent.host.current": (
        "flip",
        "read_current",
    ),
    "cutover.agent.host.drift": (
        "find_drift",
        "record_inventory",
    ),
    "cutover.agent.host.journal": (
        "Journal",
        "JournalHead",
    ),
    "cutover.agent.host.kept": (
        "RuntimeSpec",
        "load_manifest",
        "load_runtime",
    ),
    "cutover.agent.host.layout": ("Layout",),
    "cutover.agent.host.ledger": ("Ledger",),
    "cutover.agent.host.lock": ("AppLock",),
    "cutover.agent.host.phases": ("ActivationPhase",),
    "cutover.agent.host.recovery": (
        "DiskView",
        "RecoveryPlan",
        "plan_recovery",
    ),
    "cutover.agent.host.state": (
        "AppState",
        "Pending",
        "ReleaseRecord",
        "ReleaseStatus",
        "utcnow",
    ),
    "cutover.agent.host.trash": ("remove_tree",),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

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
