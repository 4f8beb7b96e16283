"""The disk side of one app root: layout, the current link, installation, kept manifests,
shared paths, trash, state and journal (the ledger), lock, drift, the activation phases and the
pure recovery planner. Synchronous (but for the stage workers' lock's cancellable wait) and
config-free: callers pass plain values."""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.host.current import flip as flip
    from cutover.agent.host.current import read_current as read_current
    from cutover.agent.host.drift import find_drift as find_drift
    from cutover.agent.host.drift import record_inventory as record_inventory
    from cutover.agent.host.journal import Journal as Journal
    from cutover.agent.host.journal import JournalHead as JournalHead
    from cutover.agent.host.kept import RuntimeSpec as RuntimeSpec
    from cutover.agent.host.kept import load_manifest as load_manifest
    from cutover.agent.host.kept import load_runtime as load_runtime
    from cutover.agent.host.layout import Layout as Layout
    from cutover.agent.host.ledger import Ledger as Ledger
    from cutover.agent.host.lock import AppLock as AppLock
    from cutover.agent.host.phases import ActivationPhase as ActivationPhase
    from cutover.agent.host.recovery import DiskView as DiskView
    from cutover.agent.host.recovery import RecoveryPlan as RecoveryPlan
    from cutover.agent.host.recovery import plan_recovery as plan_recovery
    from cutover.agent.host.state import AppState as AppState
    from cutover.agent.host.state import Pending as Pending
    from cutover.agent.host.state import ReleaseRecord as ReleaseRecord
    from cutover.agent.host.state import ReleaseStatus as ReleaseStatus
    from cutover.agent.host.state import utcnow as utcnow
    from cutover.agent.host.trash import remove_tree as remove_tree

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
