"""What the agent runs on a host: hooks, health checks, and the process runner under both.

The health-check names load lazily (PEP 562): they import aiohttp, which the on-host CLI only needs
when checks actually run.
"""

from __future__ import annotations

from cutover.agent.actions.hooks import (
    HookContext,
    HookFailedError,
    HookResult,
    run_hook,
    run_hooks,
)

_HEALTH = frozenset(
    {"CheckResult", "HealthContext", "PhaseResult", "probe_version", "run_check", "run_phase"}
)

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


def __getattr__(name: str) -> object:
    if name in _HEALTH:
        from cutover.agent.actions import health

        return getattr(health, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
