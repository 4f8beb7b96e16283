"""How ``deploy`` activates a staged release: the seam the rollout engine plugs into.

``deploy`` = push (stage everywhere first) + an :class:`ActivationStrategy`. This version ships
:class:`AllAtOnce` (every host that staged, in parallel up to ``max_parallel``). The rollout
engine (canary, waves, bake, failure budget, automatic revert) implements the same protocol and
returns the same :class:`FleetResult`, so the deploy command, its output and its exit codes do not
change when it lands.
"""

from __future__ import annotations

from typing import Protocol

from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.results import FleetResult
from cutover.controller.fleet.runner import FleetRunner
from cutover.controller.fleet.steps import activate_step

__all__ = ["ActivationStrategy", "AllAtOnce"]


class ActivationStrategy(Protocol):
    """Activates ``version`` of ``app`` on ``hosts`` (all of which staged it)."""

    name: str

    async def activate(
        self, runner: FleetRunner, app: str, version: str, hosts: list[HostSpec]
    ) -> FleetResult: ...


class AllAtOnce:
    """Every host at once (bounded by the runner's ``max_parallel``); no canary, no revert."""

    name = "all-at-once"

    async def activate(
        self, runner: FleetRunner, app: str, version: str, hosts: list[HostSpec]
    ) -> FleetResult:
        return await runner.run("activate", app, version, activate_step(app, version), hosts)
