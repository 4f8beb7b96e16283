"""What one rollout's wave runner and reverter both work with (one bundle, built once per run).

:class:`RolloutContext` holds the rollout's hosts by name, the way to reach an agent, the local
state, the event sink and the lease keeper; :class:`.waves.WaveRunner` and
:class:`.revert.Reverter` take it instead of the same five arguments each.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cutover.controller.fleet.agents import AgentPort
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.runner import EventSink, now_iso
from cutover.controller.rollout.leases import LeaseKeeper
from cutover.controller.rollout.store import RolloutStore

__all__ = ["RolloutContext"]


@dataclass(frozen=True)
class RolloutContext:
    """The collaborators of one rollout run.

    Attributes:
        hosts: host name -> its spec (every host of the rollout's waves).
        connect: host -> agent port (the CLI's signed client; tests may inject theirs).
        store: the local state.
        sink: receives every event.
        leases: holds the agents' leases for the rollout (None: no leases, e.g. a unit test).
    """

    hosts: dict[str, HostSpec]
    connect: Callable[[HostSpec], AgentPort]
    store: RolloutStore
    sink: EventSink
    leases: LeaseKeeper | None

    def emit(self, event: dict[str, Any]) -> None:
        """``event`` to the sink, stamped with ``ts``."""
        self.sink({"ts": now_iso(), **event})

    def lease_for(self, host: str) -> str | None:
        """The lease id ``host``'s requests carry (None: the rollout holds no leases)."""
        return self.leases.lease_id(host) if self.leases is not None else None

    def port(self, host: str) -> AgentPort:
        """A new port to ``host``'s agent (the caller closes it)."""
        return self.connect(self.hosts[host])
