"""What the agent runs on a host: hooks, health checks, and the process runner under both.

Every name loads lazily (agent/_util/lazy.py); the health-check names import aiohttp, which the
on-host CLI only needs when checks actually run.
"""

from __future__ import annotations

import typing

from cutover.agent._util.lazy import lazy_exports as _lazy_exports

if typing.TYPE_CHECKING:
    from cutover.agent.actions.health import (
        CheckResult,
        HealthContext,
        PhaseResult,
        probe_version,
        run_check,
        run_phase,
    )
    from cutover.agent.actions.hooks import (
        HookContext,
        HookFailedError,
        HookResult,
        run_hook,
        run_hooks,
    )

_EXPORTS = {
    "cutover.agent.actions.health": (
        "CheckResult",
        "HealthContext",
        "PhaseResult",
        "probe_version",
        "run_check",
        "run_phase",
    ),
    "cutover.agent.actions.hooks": (
        "HookContext",
        "HookFailedError",
        "HookResult",
        "run_hook",
        "run_hooks",
    ),
}
__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)

__all__ = [
    "CheckResult",
    "HealthContext",
    "HookContext",
    "HookFailedError",
    "HookResult",
    "PhaseResult",
    "probe_version",
    "run_check",
    "run_hook",
    "run_hooks",
    "run_phase",
]
