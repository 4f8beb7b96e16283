"""The fleet's narrow view of one agent: the only fleet module that touches ``AgentClient``.

Everything else in :mod:`cutover.controller.fleet` talks to :class:`AgentPort` and gets typed
answers (:class:`AppView`, :class:`OpRecord`, :class:`JournalEntry`) or one of the
:mod:`cutover.agent.errors` classes (from the error registry), so a change of client changes
this file only, and an engine or a test can hand the runner its own ``connect`` (host -> port).

Error rules the runner relies on:

* the agent could not be reached (connection refused, timeout, TLS) -> :class:`UnreachableError`,
  an exchange that broke after connecting -> :class:`TransportError` (its base);
* the agent refused the request or the package (401, signature, downgrade, ...) -> the
  :class:`RejectedError` subclass the error registry names for the agent's answer;
* an operation that ran and failed comes back as its :class:`OpRecord` (status ``failed``, with
  its id); :meth:`OpRecord.failure` is the error of its reason code (``SignatureError``,
  ``ActivationFailedError``, ...); a ``transport`` failure *inside* an operation (the agent could
  not download ``--package-url``) is an :class:`OperationalError`, not "host unreachable".
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Callable, Mapping
from contextlib import aclosing
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from cutover.agent.errors import (
    ConfigError,
    CutoverError,
    OperationalError,
    TransportError,
    from_wire,
)
from cutover.agent.keys import PrivateKey
from cutover.controller.delta import ask_missing
from cutover.controller.fleet.inventory import Concurrency, HostSpec

if TYPE_CHECKING:
    from cutover.controller.client import AgentClient

__all__ = [
    "AgentEvent",
    "AgentPool",
    "AgentPort",
    "AppView",
    "ClientAgent",
    "JournalEntry",
    "LeaseView",
    "OpRecord",
    "ReleaseView",
    "connect",
    "error_from_code",
]

AgentEvent = Callable[[dict[str, Any]], None]
POLL_S = 0.5  # operation record polling, only when the event stream broke


class _Tolerant(BaseModel):
    """Responses may gain fields within /v1 (docs/protocol.md): ignore unknown ones."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class ReleaseView(_Tolerant):
    """One release record of an agent (``GET /v1/apps/{app}``); what status and log read."""

    version: str
    status: str
    installed: bool = True
    health: list[dict[str, Any]] = []
    reason: str = ""
    manifest_digest: str = ""
    payload_digest: str = ""  # absent from agents before the release log: ""
    release_type: str = ""
    owner: str = ""
    summary: str = ""
    notes: str = ""
    adopted: bool = False
    staged_at: str = ""
    activated_at: str | None = None
    first_activated_at: str | None = None  # absent from agents before it: None
    left_by: str = ""  # how current last left it: "activate" | "rollback" ("" from older agents)


class AppView(_Tolerant):
    app: str
    current: str | None = None
    previous: str | None = None
    staged: list[str] = []
    busy: dict[str, Any] | None = None
    releases: list[ReleaseView] = []
    frozen: dict[str, dict[str, Any]] = {}  # staged version -> the freeze window refusing it now

    def last_health(self) -> str | None:
        """``"live pass"`` of the current release's newest health phase, or None."""
        rec = next((r for r in self.releases if r.version == self.current), None)
        if rec is None or not rec.health:
            return None
        last = rec.health[-1]
        return f"{last.get('phase', '?')} {last.get('status', '?')}"


class OpRecord(_Tolerant):
    id: str
    op: str
    status: str
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None

    def failure(self) -> CutoverError | None:
        """None if the operation succeeded, else the error its reason code stands for."""
        if self.status == "succeeded":
            return None
        err = self.error or {}
        return error_from_code(
            str(err.get("error") or "failed"),
            str(err.get("message") or f"operation {self.id} {self.status}"),
            kind=err.get("kind"),
            in_operation=True,
            health=err.get("health"),
        )


class LeaseView(_Tolerant):
    """An agent's lease on an app (agent/daemon/leases.py)."""

    id: str
    rollout: str
    owner: str
    expires: str = ""


class JournalEntry(_Tolerant):
    seq: int
    ts: str
    event: str
    version: str | None = None
    actor: str | None = None
    previous: str | None = None
    ref: str | None = None
    checkpoint_ref: str | None = None
    reason: Any = None
    error: Any = None
    phase: str | None = None
    results: list[dict[str, Any]] = []  # hooks.done / hooks.failed: each hook's result


def error_from_code(
    code: str,
    message: str,
    *,
    kind: str | None = None,
    in_operation: bool = False,
    holder: Mapping[str, object] | None = None,
    health: str | None = None,
) -> CutoverError:
    """The registry's error for a wire body (``error`` = ``code``, ``kind``; agent/errors.py).

    ``in_operation``: the body is a failed operation's; a ``transport`` failure there is the
    agent's own download failing (the agent answered), so it is an :class:`OperationalError`.
    """
    exc = from_wire(code, message, kind=kind, holder=holder, health=health)
    if in_operation and isinstance(exc, TransportError):
        return OperationalError(message, code=code)
    return exc


class AgentPort(Protocol):
    """What fleet operations need from one agent."""

    async def app(self, app: str) -> AppView: ...
    async def journal(self, app: str, limit: int) -> list[JournalEntry]: ...
    async def upload(
        self, app: str, version: str, package: Path, sha256: bytes, on_event: AgentEvent
    ) -> OpRecord: ...
    async def fetch(self, app: str, version: str, url: str, on_event: AgentEvent) -> OpRecord: ...
    async def missing(self, app: str, version: str, digests: list[str]) -> list[str] | None: ...
    async def activate(
        self,
        app: str,
        version: str,
        on_event: AgentEvent,
        lease: str | None = None,
        run_once: bool = True,
    ) -> OpRecord: ...
    async def rollback(
        self,
        app: str,
        to: str | None,
        on_event: AgentEvent,
        lease: str | None = None,
        *,
        accept_db_risk: bool = False,
    ) -> OpRecord: ...
    async def lease(
        self, app: str, rollout: str, owner: str, ttl_s: float, *, steal: bool, renew: str | None
    ) -> LeaseView: ...
    async def release_lease(self, app: str, lease_id: str) -> bool: ...
    async def close(self) -> None: ...


def _plain(answer: Any) -> Any:
    """A client answer as plain JSON data: today's client returns dicts, the typed client
    pydantic models (``extra="allow"``, so event- and entry-specific fields survive the dump)."""
    if isinstance(answer, BaseModel):
        return answer.model_dump(mode="json", by_alias=True)
    return answer


def _parse(model: type[Any], data: Any, where: str) -> Any:
    try:
        return model.model_validate(_plain(data))
    except ValidationError as exc:
        raise TransportError(f"{where}: unexpected response: {exc.errors()[:1]}") from exc


class ClientAgent:
    """:class:`AgentPort` over the typed :class:`AgentClient` (its answers are re-read into the
    fleet's narrow views, so the fleet depends on the fields it uses only)."""

    def __init__(self, client: AgentClient, name: str, *, owns_client: bool = True) -> None:
        self._client = client
        self.name = name
        self._owns_client = owns_client

    async def close(self) -> None:
        if self._owns_client:  # a pooled client stays open for the next step (AgentPool)
            await self._client.close()

    async def app(self, app: str) -> AppView:
        view: AppView = _parse(AppView, await self._client.app(app), self.name)
        return view

    async def journal(self, app: str, limit: int) -> list[JournalEntry]:
        entries = await self._client.journal(app, limit)
        return [_parse(JournalEntry, e, self.name) for e in entries]

    async def _follow(self, accepted: Any, on_event: AgentEvent) -> OpRecord:
        """Relay the operation's events, then return its final record (failed or not).

        The stream's last event, ``operation.done``, carries the record's outcome (status,
        result, error body), so the record is only read when the stream broke before it: one
        request per host and operation fewer (a rollout of 100 hosts sends 100 fewer).
        """
        plain = _plain(accepted)
        op_id = str(plain.get("operation", ""))
        try:
            async with aclosing(self._client.events(op_id)) as events:
                async for answer in events:
                    event: dict[str, Any] = _plain(answer)
                    if event.get("event") == "operation.done":
                        if event.get("status") in ("succeeded", "failed") and not isinstance(
                            event.get("error"), str
                        ):
                            done = {
                                "id": op_id,
                                "op": str(plain.get("op", "")),
                                "status": event["status"],
                                "result": event.get("result"),
                                "error": event.get("error"),
                            }
                            final: OpRecord = _parse(OpRecord, done, self.name)
                            return final
                        break
                    on_event(event)
        except TransportError:
            pass  # the record tells the outcome; poll it below
        while True:
            record: OpRecord = _parse(OpRecord, await self._client.operation(op_id), self.name)
            if record.status != "running":
                return record
            await asyncio.sleep(POLL_S)

    async def upload(
        self, app: str, version: str, package: Path, sha256: bytes, on_event: AgentEvent
    ) -> OpRecord:
        def progress(done: int, total: int) -> None:
            on_event({"event": "progress", "step": "upload", "done": done, "total": total})

        def resumed(attempt: int, offset: int, why: str) -> None:
            on_event({"event": "upload.resumed", "attempt": attempt, "offset": offset, "why": why})

        accepted = await self._client.upload(
            app, version, package, progress, sha256=sha256, on_resume=resumed
        )
        return await self._follow(accepted, on_event)

    async def fetch(self, app: str, version: str, url: str, on_event: AgentEvent) -> OpRecord:
        return await self._follow(await self._client.fetch(app, version, url), on_event)

    async def missing(self, app: str, version: str, digests: list[str]) -> list[str] | None:
        return await ask_missing(self._client, app, version, digests)

    async def activate(
        self,
        app: str,
        version: str,
        on_event: AgentEvent,
        lease: str | None = None,
        run_once: bool = True,
    ) -> OpRecord:
        accepted = await self._client.activate(app, version, lease=lease, run_once=run_once)
        return await self._follow(accepted, on_event)

    async def rollback(
        self,
        app: str,
        to: str | None,
        on_event: AgentEvent,
        lease: str | None = None,
        *,
        accept_db_risk: bool = False,
    ) -> OpRecord:
        accepted = await self._client.rollback(app, to, lease=lease, accept_db_risk=accept_db_risk)
        return await self._follow(accepted, on_event)

    async def lease(
        self, app: str, rollout: str, owner: str, ttl_s: float, *, steal: bool, renew: str | None
    ) -> LeaseView:
        answer = await self._client.lease(app, rollout, owner, ttl_s, steal=steal, renew=renew)
        view: LeaseView = _parse(LeaseView, answer, self.name)
        return view

    async def release_lease(self, app: str, lease_id: str) -> bool:
        return bool((await self._client.release_lease(app, lease_id)).released)


def connect(host: HostSpec, key: PrivateKey, limits: Concurrency) -> AgentPort:
    """An :class:`AgentPort` for ``host`` signing with ``key`` (its own client: closing the port
    closes its connections)."""
    return ClientAgent(_client(host, key, limits), host.name)


class AgentPool:
    """One client per host for a long command (a rollout), reused by all its steps.

    A rollout asks every host many times (lease, staged check, freeze check, activation and its
    events, heartbeats, bake, release); a client per step would set up a new session and new
    TCP (and TLS) connections each time. The ports handed out share their host's client and
    keep-alive connections; closing such a port closes nothing, :meth:`aclose` closes them all.
    """

    def __init__(self, key: PrivateKey, limits: Concurrency) -> None:
        self._key = key
        self._limits = limits
        self._clients: dict[str, AgentClient] = {}

    def __call__(self, host: HostSpec) -> AgentPort:
        client = self._clients.get(host.name)
        if client is None:
            client = self._clients[host.name] = _client(host, self._key, self._limits)
        return ClientAgent(client, host.name, owns_client=False)

    async def aclose(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients))


def _client(host: HostSpec, key: PrivateKey, limits: Concurrency) -> AgentClient:
    ctx = None
    if host.tls_ca is not None:
        try:
            ctx = ssl.create_default_context(cafile=str(host.tls_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                f"host {host.name!r}: key 'tls_ca': cannot load {host.tls_ca}: {exc}"
            ) from exc
    from cutover.controller.client import AgentClient  # aiohttp: only to talk to a host

    return AgentClient(
        host.url,
        key,
        authority=host.authority,
        timeout_s=limits.timeout_s,
        upload_timeout_s=limits.upload_timeout_s,
        ssl_context=ctx,
        fingerprint=host.tls_fingerprint,
    )
