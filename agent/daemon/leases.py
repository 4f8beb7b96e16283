"""Leases: the fleet-wide lock of a rollout, kept on each agent (docs/protocol.md §Leases).

Rules this module enforces:

* an app has at most one **live** lease: ``{id, rollout, owner, actor, acquired_at, expires_at}``;
  a lease whose ``expires_at`` has passed is stale and counts as absent (it expires by itself:
  nothing has to clean it up, so a rollout whose controller died never locks the app for good);
* acquiring while another live lease is held is refused (:class:`LockedError`, ``409`` naming the
  holder) unless ``steal`` is asked; a steal is recorded with the actor and the lease it replaced,
  in the lease audit trail and (by the daemon, agent/daemon/lease_routes.py) in the app's journal;
* renewing needs the lease's id; a lease that expired or was stolen cannot be renewed (``409``);
* an **activate** or **rollback** request must carry the id of the live lease when there is one
  (``lease`` in its body), else ``409`` naming the holder; without a live lease any request passes
  (a plain ``cutover activate``, the on-host CLI: the lease guards rollouts against each other);
* leases survive a restart of the agent: the table is written durably (temp file, fsync, rename)
  to ``<state_dir>/leases.json``; every acquire, steal, renew-after-loss and release is appended to
  ``<state_dir>/leases.jsonl`` (JSON lines), the lease audit trail.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cutover.agent._util.fsutil import atomic_write
from cutover.agent.errors import LockedError

__all__ = ["MAX_TTL_S", "Lease", "LeaseTable"]

log = structlog.get_logger(__name__)

MAX_TTL_S = 3600.0


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class Lease(BaseModel):
    """One app's lease (also its wire form: ``POST /v1/apps/{app}/lease`` answers it)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    app: str
    rollout: str
    owner: str
    actor: str
    acquired_at: float
    expires_at: float
    ttl_s: float = Field(gt=0, le=MAX_TTL_S)

    def live(self, now: float) -> bool:
        return now < self.expires_at

    def holder(self) -> dict[str, object]:
        """What a refusal tells about the lease in the way."""
        return {
            "lease": self.id,
            "rollout": self.rollout,
            "owner": self.owner,
            "actor": self.actor,
            "expires_at": _iso(self.expires_at),
        }

    def to_json(self) -> dict[str, Any]:
        return {**self.model_dump(), "expires": _iso(self.expires_at)}


class _File(BaseModel):
    model_config = ConfigDict(extra="forbid")
    leases: dict[str, Lease] = {}


class LeaseTable:
    """The leases of every app of this agent; thread-safe, persisted under ``state_dir``."""

    def __init__(self, state_dir: Path, clock: Callable[[], float] = time.time) -> None:
        self._path = state_dir / "leases.json"
        self._audit = state_dir / "leases.jsonl"
        self._clock = clock
        self._mutex = threading.Lock()
        self._leases: dict[str, Lease] = {}
        if self._path.exists():
            try:
                self._leases = _File.model_validate_json(self._path.read_bytes()).leases
            except (OSError, ValidationError) as exc:  # a lease table is advisory: start empty
                log.warning("leases_unreadable", path=str(self._path), error=str(exc))

    def held(self, app: str) -> Lease | None:
        """The app's live lease, or None."""
        lease = self._leases.get(app)
        return lease if lease is not None and lease.live(self._clock()) else None

    def acquire(
        self,
        app: str,
        *,
        rollout: str,
        owner: str,
        actor: str,
        ttl_s: float,
        steal: bool = False,
        renew: str | None = None,
        on_steal: Callable[[Lease, Lease], None] | None = None,
    ) -> Lease:
        """Take, renew (``renew`` = its id) or steal the app's lease.

        ``on_steal(new, replaced)`` runs before a steal is saved (the daemon journals it in the
        app's journal); if it raises, nothing changed.

        Raises:
            LockedError: another live lease is held (and no ``steal``), or the lease to renew is
                not the live one any more (expired, stolen, released).
        """
        with self._mutex:
            now = self._clock()
            current = self.held(app)
            if renew is not None:
                if current is None or current.id != renew:
                    why = "was taken over" if current is not None else "expired or was released"
                    raise LockedError(
                        f"app {app!r}: lease {renew} {why}; the rollout must stop",
                        code="lease_lost",
                        holder=current.holder() if current else {},
                    )
                lease = current.model_copy(update={"expires_at": now + ttl_s, "ttl_s": ttl_s})
                self._save(app, lease)
                return lease
            if current is not None and current.rollout != rollout and not steal:
                raise LockedError(
                    f"app {app!r} is leased by rollout {current.rollout} of {current.owner} "
                    f"until {_iso(current.expires_at)}; wait for it, or take it over with --steal",
                    holder=current.holder(),
                )
            if current is not None and current.rollout == rollout:
                lease = current.model_copy(update={"expires_at": now + ttl_s, "ttl_s": ttl_s})
            else:
                lease = Lease(
                    id=f"lease-{secrets.token_hex(8)}",
                    app=app,
                    rollout=rollout,
                    owner=owner,
                    actor=actor,
                    acquired_at=now,
                    expires_at=now + ttl_s,
                    ttl_s=ttl_s,
                )
            if current is not None and current.rollout != rollout and on_steal is not None:
                on_steal(lease, current)
            self._save(app, lease)
            if current is not None and current.rollout != rollout:
                self._record("lease.steal", lease, actor, replaced=current.holder())
                log.warning(
                    "lease_stolen", app=app, rollout=rollout, actor=actor, replaced=current.id
                )
            elif current is None:
                self._record("lease.acquire", lease, actor)
            return lease

    def release(self, app: str, lease_id: str, actor: str) -> bool:
        """Drop the lease ``lease_id`` if it is the app's; True if it was."""
        with self._mutex:
            lease = self._leases.get(app)
            if lease is None or lease.id != lease_id:
                return False
            del self._leases[app]
            self._persist()
            self._record("lease.release", lease, actor)
            return True

    def check(self, app: str, lease_id: str | None, what: str) -> None:
        """An activate/rollback may go ahead: no live lease, or it names the live one.

        Raises:
            LockedError: another lease is live (or the named one is not).
        """
        current = self.held(app)
        if current is None:
            if lease_id is not None:
                raise LockedError(
                    f"app {app!r}: {what} names lease {lease_id}, which expired or was released; "
                    "the rollout must renew its lease (or start again)",
                    code="lease_lost",
                )
            return
        if current.id != lease_id:
            raise LockedError(
                f"app {app!r} is leased by rollout {current.rollout} of {current.owner} until "
                f"{_iso(current.expires_at)}: {what} refused",
                holder=current.holder(),
            )

    # ------------------------------------------------------------------ persistence
    def _save(self, app: str, lease: Lease) -> None:
        self._leases[app] = lease
        self._persist()

    def _persist(self) -> None:
        now = self._clock()
        live = {a: x for a, x in self._leases.items() if x.live(now)}
        self._leases = live
        atomic_write(self._path, _File(leases=live).model_dump_json().encode(), mode=0o600)

    def _record(self, event: str, lease: Lease, actor: str, **extra: Any) -> None:
        entry = {
            "ts": _iso(self._clock()),
            "event": event,
            "app": lease.app,
            "lease": lease.id,
            "rollout": lease.rollout,
            "owner": lease.owner,
            "actor": actor,
            **extra,
        }
        with self._audit.open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(entry, separators=(",", ":")) + "\n")
        fields = {k: v for k, v in entry.items() if k not in ("ts", "event")}
        log.info("lease_changed", change=event, **fields)
