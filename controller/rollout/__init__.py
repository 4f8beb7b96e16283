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
    from cutover.controller.rollout.decision import Decision as Decision
    from cutover.controller.rollout.decision import decide as decide
    from cutover.controller.rollout.engine import RolloutEngine as RolloutEngine
    from cutover.controller.rollout.leases import DEFAULT_TTL_S as DEFAULT_TTL_S
    from cutover.controller.rollout.leases import PAUSE_LEASE_S as PAUSE_LEASE_S
    from cutover.controller.rollout.leases import LeaseKeeper as LeaseKeeper
    from cutover.controller.rollout.plan import Amount as Amount
    from cutover.controller.rollout.plan import RolloutParams as RolloutParams
    from cutover.controller.rollout.plan import failure_budget as failure_budget
    from cutover.controller.rollout.plan import parse_amount as parse_amount
    from cutover.controller.rollout.plan import plan_waves as plan_waves
    from cutover.controller.rollout.report import EXIT_PAUSED as EXIT_PAUSED
    from cutover.controller.rollout.report import Evidence as Evidence
    from cutover.controller.rollout.report import HostFailure as HostFailure
    from cutover.controller.rollout.report import RolloutSummary as RolloutSummary
    from cutover.controller.rollout.report import failure_from as failure_from
    from cutover.controller.rollout.report import rollout_exit_code as rollout_exit_code
    from cutover.controller.rollout.report import summary_event as summary_event
    from cutover.controller.rollout.report import webhook_body as webhook_body
    from cutover.controller.rollout.store import STATE_ENV as STATE_ENV
    from cutover.controller.rollout.store import RolloutRecord as RolloutRecord
    from cutover.controller.rollout.store import RolloutStatus as RolloutStatus
    from cutover.controller.rollout.store import RolloutStore as RolloutStore
    from cutover.controller.rollout.store import default_state_dir as default_state_dir

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
