"""Room on a filesystem beyond the releases: what running stages have reserved, and what other
holders (the daemon's resume partials) may give back (docs/operations.md §6.1).

Rules:

* **A stage reserves what it will write.** Once retention by disk lets a stage write, the bytes
  it needs are reserved on its filesystem (keyed by ``st_dev``) until the stage ends; the free
  space any stage's check sees is ``statvfs`` minus what the *other* reservations on that
  filesystem have yet to write (``need - written``, never below 0). So two apps staging at once
  on one filesystem cannot together cross a threshold each would keep alone. Check and
  reservation happen under one lock (:meth:`Reservations.try_reserve`), so two checks cannot
  both pass on the same free bytes.
* **Process-wide.** :data:`RESERVATIONS` is one registry per process: the daemon's stages (of
  every app) see each other. A stage run by another process (the on-host CLI, a second agent)
  is not seen; its written bytes are, through ``statvfs``, but not what it has yet to write.
* **Other holders.** A :class:`SpaceHolder` holds bytes that are not releases and can say where
  and how many (:meth:`SpaceHolder.holdings`, named in an ``insufficient_space`` refusal), drop
  what has expired (:meth:`SpaceHolder.expire`) and, when a stage needs room, drop what it holds
  for that app and that filesystem and nobody is using (:meth:`SpaceHolder.reclaim`); the
  daemon's upload spool (agent/daemon/uploads.py) is one.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from cutover.agent.host.diskspace import DiskProbe, DiskRule, DiskUsage

__all__ = [
    "RESERVATIONS",
    "Reservation",
    "Reservations",
    "Room",
    "SpaceHolder",
    "device_of",
]


def device_of(path: Path) -> int:
    """The filesystem ``path`` is on (``st_dev``). Blocking."""
    return os.stat(path).st_dev


class SpaceHolder(Protocol):
    """Bytes on disk that are not releases (see the module docstring). Blocking methods."""

    def holdings(self, device: int) -> list[tuple[Path, int]]:
        """(directory, bytes held there) on filesystem ``device``; empty when nothing."""
        ...

    def expire(self) -> None:
        """Drop what has expired (whatever filesystem it is on)."""
        ...

    def reclaimable(self, app: str, device: int) -> int:
        """The bytes :meth:`reclaim` would free now."""
        ...

    def reclaim(self, app: str, device: int) -> int:
        """Drop what is held for ``app`` on ``device`` that nothing is using; the bytes freed."""
        ...


@dataclass(eq=False)
class Reservation:
    """The bytes one stage will write on one filesystem; :meth:`release` at its end."""

    device: int
    need: int
    written: int = 0  # set by the stage as it writes (cumulative)
    _owner: Reservations | None = field(default=None, repr=False)

    @property
    def outstanding(self) -> int:
        return max(0, self.need - self.written)

    def release(self) -> None:
        """The stage ended: its bytes are on disk (or gone). Idempotent."""
        if self._owner is not None:
            self._owner._drop(self)
            self._owner = None


class Reservations:
    """Outstanding reservations per filesystem (one registry per process: :data:`RESERVATIONS`)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: list[Reservation] = []

    def outstanding(self, device: int) -> int:
        """Bytes the running stages on ``device`` have reserved and not yet written."""
        with self._lock:
            return sum(r.outstanding for r in self._held if r.device == device)

    def try_reserve(
        self, path: Path, need: int, rule: DiskRule, probe: DiskProbe
    ) -> tuple[Reservation | None, DiskUsage]:
        """Reserve ``need`` bytes on ``path``'s filesystem if they fit above ``rule`` (always,
        when the rule is off: then the disk is not probed). Blocking (``probe`` runs under the
        lock).

        Returns:
            The reservation (None: it does not fit) and the usage the check saw, free bytes net
            of the other reservations there.
        """
        device = device_of(path)
        usage = DiskUsage(0, 0)  # not probed: no rule to check
        with self._lock:
            if rule.active:
                raw = probe(path)
                others = sum(r.outstanding for r in self._held if r.device == device)
                usage = DiskUsage(max(0, raw.free_bytes - others), raw.total_bytes)
                if rule.shortfall(usage, need):
                    return None, usage
            held = Reservation(device, need, _owner=self)
            self._held.append(held)
            return held, usage

    def _drop(self, held: Reservation) -> None:
        with self._lock:
            if held in self._held:
                self._held.remove(held)


RESERVATIONS = Reservations()


def _no_prunes(app: str, versions: list[str]) -> None:
    """Default of :attr:`Room.on_pruned`: nobody counts."""


@dataclass(frozen=True)
class Room:
    """What retention by disk consults besides the releases (``AppContext.room``).

    Attributes:
        reservations: the registry of running stages (the process's, by default).
        holders: other holders of bytes (the daemon passes its upload spool; the CLI none).
        on_pruned: told of each release pruned for space (the daemon counts them in /metrics).
    """

    reservations: Reservations = RESERVATIONS
    holders: tuple[SpaceHolder, ...] = ()
    on_pruned: Callable[[str, list[str]], None] = _no_prunes
