"""The rollout engine: canary, waves, bakes, deadlines, the failure budget, leases, resume.

Layers, top to bottom: :mod:`.engine` (runs a rollout, wave after wave, and acts on each
decision) → :mod:`.waves` (one wave: activate, bake, sort its hosts; the freeze check ahead of
it) and :mod:`.revert` (isolate, revert all, abort) → :mod:`.deadlines` (every wait on one agent,
with its deadline) and :mod:`.leases` (the agents' leases for it) → :mod:`.decision` (pure: the
decision table), :mod:`.plan` (pure: parameters, waves, budget), :mod:`.report` (pure: summary,
failure report, exit codes) and :mod:`.store` (the local SQLite state). The CLI commands are
controller/commands/rollout.py; docs/rollouts.md explains it all.
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.controller.rollout.decision import Decision, decide
    from cutover.controller.rollout.engine import RolloutEngine
    from cutover.controller.rollout.leases import DEFAULT_TTL_S, PAUSE_LEASE_S, LeaseKeeper
    from cutover.controller.rollout.plan import (
        Amount,
        RolloutParams,
        failure_budget,
        parse_amount,
        plan_waves,
    )
    from cutover.controller.rollout.report import (
        EXIT_PAUSED,
        Evidence,
        HostFailure,
        RolloutSummary,
        failure_from,
        rollout_exit_code,
        summary_event,
        webhook_body,
    )
    from cutover.controller.rollout.store import (
        STATE_ENV,
        RolloutRecord,
        RolloutStatus,
        RolloutStore,
        default_state_dir,
    )

# Loaded on first use (agent/_util/lazy.py): importing one module of the package
# does not import its siblings.
_EXPORTS = {
    "cutover.controller.rollout.decision": (
        "Decision",
        "decide",
    ),
    "cutover.controller.rollout.engine": ("RolloutEngine",),
    "cutover.controller.rollout.leases": (
        "DEFAULT_TTL_S",
        "PAUSE_LEASE_S",
        "LeaseKeeper",
    ),
    "cutover.controller.rollout.plan": (
        "Amount",
        "RolloutParams",
        "failure_budget",
        "parse_amount",
        "plan_waves",
    ),
    "cutover.controller.rollout.report": (
        "EXIT_PAUSED",
        "Evidence",
        "HostFailure",
        "RolloutSummary",
        "failure_from",
        "rollout_exit_code",
        "summary_event",
        "webhook_body",
    ),
    "cutover.controller.rollout.store": (
        "STATE_ENV",
        "RolloutRecord",
        "RolloutStatus",
        "RolloutStore",
        "default_state_dir",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "DEFAULT_TTL_S",
    "EXIT_PAUSED",
    "PAUSE_LEASE_S",
    "STATE_ENV",
    "Amount",
    "Decision",
    "Evidence",
    "HostFailure",
    "LeaseKeeper",
    "RolloutEngine",
    "RolloutParams",
    "RolloutRecord",
    "RolloutStatus",
    "RolloutStore",
    "RolloutSummary",
    "decide",
    "default_state_dir",
    "failure_budget",
    "failure_from",
    "parse_amount",
    "plan_waves",
    "rollout_exit_code",
    "summary_event",
    "webhook_body",
]
