"""Rollout state kept locally in SQLite (stdlib ``sqlite3``): the plan and what happened so far.

One file, ``<state dir>/rollouts.db`` (``--state-dir``, else ``$CUTOVER_STATE_DIR``, else
``$XDG_STATE_HOME/cutover``, else ``~/.local/state/cutover``). It holds, per rollout, its
parameters, waves, status and per-host states. It is the *plan*: on ``--resume`` the agents'
records are the truth (what each host runs now), and the local state says what was intended and
which hosts the rollout touched (so an abort reverts exactly those). Every write is one
transaction, so a CLI killed at any instant leaves a consistent row. The database runs in WAL
mode with ``synchronous=NORMAL``: a commit is an append to the log, not an fsync per write (a
power cut may lose the last commits, never consistency; the agents' records are the truth on
resume anyway), and the hosts of a wave change state in one transaction (:meth:`set_hosts`).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict

from cutover.agent.errors import ConfigError, NotFoundError
from cutover.controller.rollout.plan import RolloutParams

__all__ = [
    "STATE_ENV",
    "RolloutRecord",
    "RolloutStatus",
    "RolloutStore",
    "default_state_dir",
    "new_rollout_id",
]

STATE_ENV = "CUTOVER_STATE_DIR"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    version TEXT NOT NULL,
    fleet TEXT NOT NULL,
    owner TEXT NOT NULL,
    params TEXT NOT NULL,
    waves TEXT NOT NULL,
    status TEXT NOT NULL,
    wave INTEGER NOT NULL DEFAULT 0,
    reason TEXT NOT NULL DEFAULT '',
    promoted INTEGER NOT NULL DEFAULT 0,
    created TEXT NOT NULL,
    updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS hosts (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    host TEXT NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (rollout, host)
);
"""


class RolloutStatus(StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    ROLLED_OUT = "rolled_out"
    PARTIAL = "partial"
    REVERTED = "reverted"
    HALTED = "halted"  # past the budget with --no-auto-revert: left as it is
    ABORTED = "aborted"

    @property
    def finished(self) -> bool:
        return self not in (RolloutStatus.RUNNING, RolloutStatus.PAUSED)


class RolloutRecord(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str
    app: str
    version: str
    fleet: str
    owner: str
    params: RolloutParams
    waves: list[list[str]]
    status: RolloutStatus
    wave: int  # the next wave to start
    reason: str
    promoted: bool = False  # `cutover promote` passed the pause after the canary
    created: str
    updated: str
    hosts: dict[str, str]  # host -> state (pending, active, failed, isolated, reverted)


def default_state_dir() -> Path:
    env = os.environ.get(STATE_ENV)
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_STATE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".local" / "state") / "cutover"


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def new_rollout_id() -> str:
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return f"r-{stamp}-{secrets.token_hex(3)}"


class RolloutStore:
    """The rollouts database of one state dir."""

    def __init__(self, state_dir: Path) -> None:
        try:
            state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.path = state_dir / "rollouts.db"
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=10)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            columns = {r[1] for r in self._db.execute("PRAGMA table_info(rollouts)")}
            if "promoted" not in columns:  # a state dir from before the column
                self._db.execute(
                    "ALTER TABLE rollouts ADD COLUMN promoted INTEGER NOT NULL DEFAULT 0"
                )
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(
                f"rollout state {state_dir}: {exc}; pass --state-dir DIR or set ${STATE_ENV}"
            ) from exc

    def close(self) -> None:
        self._db.close()

    def _tx(self, sql: str, args: tuple[Any, ...]) -> None:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(sql, args)

    def create(
        self,
        app: str,
        version: str,
        fleet: str,
        owner: str,
        params: RolloutParams,
        waves: list[list[str]],
    ) -> str:
        rid = new_rollout_id()
        now = _now()
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute(
                "INSERT INTO rollouts (id, app, version, fleet, owner, params, waves, status, "
                "created, updated) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    rid,
                    app,
                    version,
                    fleet,
                    owner,
                    params.model_dump_json(),
                    json.dumps(waves),
                    RolloutStatus.RUNNING.value,
                    now,
                    now,
                ),
            )
            self._db.executemany(
                "INSERT INTO hosts (rollout, host, state) VALUES (?, ?, 'pending')",
                [(rid, h) for wave in waves for h in wave],
            )
        return rid

    def set_status(
        self, rid: str, status: RolloutStatus, reason: str = "", wave: int | None = None
    ) -> None:
        if wave is None:
            self._tx(
                "UPDATE rollouts SET status = ?, reason = ?, updated = ? WHERE id = ?",
                (status.value, reason, _now(), rid),
            )
        else:
            self._tx(
                "UPDATE rollouts SET status = ?, reason = ?, wave = ?, updated = ? WHERE id = ?",
                (status.value, reason, wave, _now(), rid),
            )

    def set_host(self, rid: str, host: str, state: str, detail: str = "") -> None:
        self.set_hosts(rid, {host: (state, detail)})

    def set_hosts(self, rid: str, states: dict[str, tuple[str, str]]) -> None:
        """Several hosts' (state, detail) in one transaction (a wave's hosts at once)."""
        if not states:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.executemany(
                "UPDATE hosts SET state = ?, detail = ? WHERE rollout = ? AND host = ?",
                [(st, detail[:2000], rid, h) for h, (st, detail) in states.items()],
            )

    def set_promoted(self, rid: str) -> None:
        self._tx("UPDATE rollouts SET promoted = 1, updated = ? WHERE id = ?", (_now(), rid))

    def get(self, rid: str) -> RolloutRecord:
        """Raises: NotFoundError: no rollout ``rid`` in this state dir."""
        row = self._db.execute(
            "SELECT id, app, version, fleet, owner, params, waves, status, wave, reason, "
            "created, updated, promoted FROM rollouts WHERE id = ?",
            (rid,),
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no rollout {rid!r} in {self.path}; `cutover rollouts` lists them "
                f"(another machine's rollouts are in its own state dir)"
            )
        hosts = dict(
            self._db.execute("SELECT host, state FROM hosts WHERE rollout = ?", (rid,)).fetchall()
        )
        return RolloutRecord(
            id=row[0],
            app=row[1],
            version=row[2],
            fleet=row[3],
            owner=row[4],
            params=RolloutParams.model_validate_json(row[5]),
            waves=json.loads(row[6]),
            status=RolloutStatus(row[7]),
            wave=row[8],
            reason=row[9],
            created=row[10],
            updated=row[11],
            promoted=bool(row[12]),
            hosts=hosts,
        )

    def list(self, limit: int = 50) -> list[RolloutRecord]:
        ids = [
            r[0]
            for r in self._db.execute(
                "SELECT id FROM rollouts ORDER BY created DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
        ]
        return [self.get(i) for i in ids]
