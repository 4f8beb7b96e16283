"""The rollout's side of the agents' leases: take one on every host, renew them, release them.

A rollout leases the app on **every** host of its selection before it changes anything; if one
agent refuses (another rollout holds the app there), the leases already taken are released and
the rollout stops with that agent's :class:`LockedError`, which names the holder (rollout id,
owner, expiry). While the rollout runs, a background task renews every lease each third of the
TTL, so the leases are held through post-activation hooks and bakes; a controller that dies
simply stops renewing, and the leases expire by themselves after ``ttl_s``. ``steal`` takes
over a live lease (the agent journals it with the actor and the previous holder). A rollout
that ends releases its leases; a **paused** one keeps them (:meth:`LeaseKeeper.hold`: renewed
once for ``--pause-lease``, default 1 h, then no longer renewed), so another rollout is refused
naming it while an operator decides; ``promote``, ``--resume`` and ``abort`` take them again
(an agent renews a lease asked for by the rollout that holds it) and ``abort`` releases them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

from cutover.agent.errors import CutoverError, LockedError
from cutover.controller.fleet.agents import AgentPort
from cutover.controller.fleet.inventory import HostSpec
from cutover.controller.fleet.runner import EventSink, now_iso

__all__ = ["DEFAULT_TTL_S", "PAUSE_LEASE_S", "LeaseKeeper"]

DEFAULT_TTL_S = 30.0
PAUSE_LEASE_S = 3600.0  # a paused rollout's leases (the agents' maximum TTL)
RELEASE_WAIT_S = 5.0  # a host that does not answer this fast lets its lease expire instead


class LeaseKeeper:
    """Holds the leases of one rollout on its hosts."""

    def __init__(
        self,
        app: str,
        rollout: str,
        owner: str,
        connect: Callable[[HostSpec], AgentPort],
        sink: EventSink,
        *,
        ttl_s: float = DEFAULT_TTL_S,
        steal: bool = False,
    ) -> None:
        self.app, self.rollout, self.owner = app, rollout, owner
        self._connect = connect
        self._sink = sink
        self.ttl_s = ttl_s
        self._steal = steal
        self._held: dict[str, str] = {}  # host -> lease id
        self._hosts: dict[str, HostSpec] = {}
        self._renewer: asyncio.Task[None] | None = None

    def lease_id(self, host: str) -> str | None:
        return self._held.get(host)

    async def _take(self, host: HostSpec, renew: str | None) -> str:
        port = self._connect(host)
        try:
            lease = await port.lease(
                self.app, self.rollout, self.owner, self.ttl_s, steal=self._steal, renew=renew
            )
            return lease.id
        finally:
            await port.close()

    async def acquire(self, hosts: list[HostSpec]) -> None:
        """Lease the app on every host, or on none.

        Raises:
            LockedError: an agent refused (its message names the holder and the host).
            CutoverError: an agent could not be asked (unreachable, ...).
        """
        self._hosts = {h.name: h for h in hosts}
        answers = await asyncio.gather(
            *(self._take(h, None) for h in hosts), return_exceptions=True
        )
        problems: list[tuple[str, BaseException]] = []
        for h, answer in zip(hosts, answers, strict=True):
            if isinstance(answer, str):
                self._held[h.name] = answer
            else:
                problems.append((h.name, answer))
        if problems:
            await self.release()
            host, exc = problems[0]
            if isinstance(exc, LockedError):
                raise LockedError(
                    f"{host}: {exc}; no host was changed (a paused rollout keeps its leases "
                    "until it is promoted, resumed or aborted on the machine that runs it)",
                    code=exc.code,
                    holder=exc.holder,
                ) from exc
            if isinstance(exc, CutoverError):
                raise type(exc)(f"{host}: cannot take the rollout's lease: {exc}") from exc
            raise exc
        self._sink(
            {
                "ts": now_iso(),
                "event": "lease.acquired",
                "rollout": self.rollout,
                "hosts": sorted(self._held),
                "ttl_s": self.ttl_s,
                "stolen": self._steal,
            }
        )
        self._renewer = asyncio.create_task(self._renew_loop())

    async def _renew_loop(self) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            await asyncio.gather(*(self._renew(n, i) for n, i in list(self._held.items())))

    async def _renew(self, name: str, lease_id: str) -> None:
        try:
            self._held[name] = await asyncio.wait_for(
                self._take(self._hosts[name], lease_id), self.ttl_s / 3
            )
        except (CutoverError, TimeoutError) as exc:  # an unreachable host is the engine's to see
            self._note("lease.renew_failed", name, exc)

    def _note(self, event: str, host: str, exc: BaseException) -> None:
        detail = str(exc) or type(exc).__name__
        self._sink(
            {
                "ts": now_iso(),
                "event": event,
                "rollout": self.rollout,
                "host": host,
                "detail": f"{detail}; the lease expires by itself within {self.ttl_s:g}s",
            }
        )

    async def _stop_renewing(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
            self._renewer = None

    async def hold(self, ttl_s: float) -> None:
        """Keep every lease for ``ttl_s`` more (a paused rollout), then stop renewing them."""
        await self._stop_renewing()

        async def one(name: str, lease_id: str) -> None:
            port = self._connect(self._hosts[name])
            try:
                await asyncio.wait_for(
                    port.lease(
                        self.app, self.rollout, self.owner, ttl_s, steal=False, renew=lease_id
                    ),
                    RELEASE_WAIT_S,
                )
            except (CutoverError, TimeoutError) as exc:
                self._note("lease.hold_failed", name, exc)
            finally:
                await port.close()

        held, self._held = self._held, {}
        await asyncio.gather(*(one(n, i) for n, i in held.items()))
        self._sink(
            {
                "ts": now_iso(),
                "event": "lease.held",
                "rollout": self.rollout,
                "hosts": sorted(held),
                "ttl_s": ttl_s,
            }
        )

    async def release(self) -> None:
        """Release every lease held (a host that does not answer lets it expire)."""
        await self._stop_renewing()

        async def one(name: str, lease_id: str) -> None:
            port = self._connect(self._hosts[name])
            try:
                await asyncio.wait_for(port.release_lease(self.app, lease_id), RELEASE_WAIT_S)
            except (CutoverError, TimeoutError) as exc:
                self._note("lease.release_failed", name, exc)
            finally:
                await port.close()

        held, self._held = self._held, {}
        await asyncio.gather(*(one(n, i) for n, i in held.items()))
