"""What the agent runs on a host: hooks, health checks, and the process runner under both.

Every name loads lazily (agent/_util/lazy.py); the health-check names import aiohttp, which the
on-host CLI only needs when checks actually run.
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.actions.health import CheckResult as CheckResult
    from cutover.agent.actions.health import HealthContext as HealthContext
    from cutover.agent.actions.health import PhaseResult as PhaseResult
    from cutover.agent.actions.health import probe_version as probe_version
    from cutover.agent.actions.health import run_check as run_check
    from cutover.agent.actions.health import run_phase as run_phase
    from cutover.agent.actions.hooks import HookContext as HookContext
    from cutover.agent.actions.hooks import HookFailedError as HookFailedError
    from cutover.agent.actions.hooks import HookResult as HookResult
    from cutover.agent.actions.hooks import run_hook as run_hook
    from cutover.agent.actions.hooks import run_hooks as run_hooks

# Loaded on first use from the block above (agent/_util/lazy.py): importing one module
# of the package does not import its siblings.
__getattr__, __dir__ = _lazy_exports(__name__)
