"""What every lifecycle operation is given: the app, its config section, its files and books,
who asked, and where progress events go; plus the result every operation returns."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cutover.agent._util.lazylog import get_logger
from cutover.agent.config import AppSection
from cutover.agent.errors import CutoverError, NotFoundError
from cutover.agent.host.diskspace import DiskProbe, statvfs_probe
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.room import Room
from cutover.agent.host.state import AppState, ReleaseRecord

__all__ = ["AppContext", "EventSink", "OpResult", "installed_names", "installed_record"]

log = get_logger(__name__)

EventSink = Callable[[dict[str, Any]], None]


def no_events(_: dict[str, Any]) -> None:
    return None


@dataclass
class OpResult:
    """What an operation did, for the CLI's output and the API's operation record."""

    op: str
    app: str
    ok: bool = True
    version: str | None = None
    current: str | None = None
    previous: str | None = None
    message: str = ""
    recovered: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "op": self.op,
            "app": self.app,
            "ok": self.ok,
            "version": self.version,
            "current": self.current,
            "previous": self.previous,
            "message": self.message,
            "recovered": self.recovered,
            **self.details,
        }


@dataclass(frozen=True)
class AppContext:
    """One app as the operations see it. Long-lived values only: no state, no lock."""

    app: str
    section: AppSection
    layout: Layout
    ledger: Ledger
    actor: str = "local"
    events: EventSink = no_events
    disk: DiskProbe = statvfs_probe  # retention by disk (agent/host/diskspace.py); tests inject
    room: Room = field(
        default_factory=Room
    )  # reservations and other holders of space (agent/host/room.py)

    def emit(self, event: str, **fields: Any) -> None:
        self.events({"event": event, "app": self.app, **fields})

    async def log(self, event: str, **fields: Any) -> None:
        """Journal one entry (in a thread: it fsyncs)."""
        await asyncio.to_thread(self.ledger.log, event, **fields)

    async def log_quietly(self, event: str, **fields: Any) -> None:
        """Journal on a failure path: a second failure (disk full) must not mask the first."""
        try:
            await self.log(event, **fields)
        except CutoverError:
            log.exception("journal_append_failed", app=self.app, journal_event=event)

    async def save(self, state: AppState) -> None:
        await asyncio.to_thread(self.ledger.save, state)


def installed_names(state: AppState) -> str:
    return ", ".join(r.version for r in state.installed()) or "(none)"


def installed_record(state: AppState, version: str) -> ReleaseRecord:
    """The record of an installed release.

    Raises:
        NotFoundError: not installed; the message lists what is.
    """
    rec = state.releases.get(version)
    if rec is None or not rec.installed:
        raise NotFoundError(
            f"{state.app} {version} is not installed on this host (stage it first with "
            f"`cutover-agent stage PACKAGE`); installed: {installed_names(state)}"
        )
    return rec
