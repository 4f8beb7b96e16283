"""Webhook notifications: push, activate, rollback, deploy and failure events as JSON.

Rules:

* the body is JSON with a Slack-compatible ``text`` (one line a human reads in a channel) plus
  the structured fields (``event``, ``app``, ``version``, ``outcome``, ``hosts``...), so the same
  URL works for Slack, Mattermost, Teams workflows or a custom receiver;
* delivery never blocks a command: :meth:`Notifier.notify` starts a background task and returns;
  each POST is bounded by the webhook's ``timeout_s``; :meth:`Notifier.drain` waits for what is in
  flight at the end of the command (each delivery is bounded, so the wait is too);
* delivery never fails a command: a refused connection, a timeout or a non-2xx answer becomes a
  ``notify.failed`` event (and a warning for humans), never an exception or an exit code;
* webhook URLs carry secrets (Slack's path is the token): reports show scheme, host and port only.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from typing import Any

import aiohttp
from yarl import URL

from cutover.controller.fleet.inventory import WebhookSpec
from cutover.controller.fleet.results import FleetOutcome, FleetResult
from cutover.controller.fleet.runner import EventSink, now_iso

__all__ = ["Delivery", "Notifier", "message_for", "redact_webhook"]

MAX_FAILED_LISTED = 10


def redact_webhook(url: str) -> str:
    """``https://hooks.slack.com/services/T/B/X`` -> ``https://hooks.slack.com/…``."""
    u = URL(url)
    port = f":{u.explicit_port}" if u.explicit_port else ""
    return f"{u.scheme}://{u.host}{port}/…"


def message_for(event: str, result: FleetResult, fleet: str) -> dict[str, Any]:
    """The JSON body for ``event`` about ``result`` (pure)."""
    ok = len(result.succeeded())
    total = len(result.hosts)
    what = f"{result.app} {result.version}" if result.version else result.app
    icon = {FleetOutcome.OK: "✅", FleetOutcome.PARTIAL: "⚠️"}.get(result.outcome, "❌")
    text = f"{icon} cutover {result.action} {what}: {result.outcome.value} ({ok}/{total} hosts ok)"
    failed = result.failed()
    if failed:
        listed = ", ".join(
            f"{h.host} {h.status.value} ({h.error})" for h in failed[:MAX_FAILED_LISTED]
        )
        more = (
            f" and {len(failed) - MAX_FAILED_LISTED} more"
            if len(failed) > MAX_FAILED_LISTED
            else ""
        )
        text += f"; failed: {listed}{more}"
    return {
        "event": event,
        "text": text,
        "action": result.action,
        "app": result.app,
        "version": result.version,
        "outcome": result.outcome.value,
        "counts": result.counts,
        "hosts": [
            {"host": h.host, "status": h.status.value, "error": h.error, "message": h.message}
            for h in result.hosts
        ],
        "fleet": fleet,
        "ts": now_iso(),
    }


@dataclass(frozen=True)
class Delivery:
    webhook: str  # redacted
    event: str
    ok: bool
    detail: str


class Notifier:
    """Sends events to the configured webhooks in the background.

    Args:
        webhooks: from fleet.toml.
        fleet: a label for the messages (the fleet file's name).
        sink: receives ``notify.sent`` / ``notify.failed`` events.
    """

    def __init__(self, webhooks: list[WebhookSpec], fleet: str, sink: EventSink) -> None:
        self._hooks = webhooks
        self._fleet = fleet
        self._sink = sink
        self._tasks: list[asyncio.Task[Delivery]] = []
        self._session: aiohttp.ClientSession | None = None

    def notify(self, event: str, result: FleetResult) -> None:
        """Queue ``event`` (and ``failure`` when the outcome is not ok) to every subscriber."""
        events = [event] + (["failure"] if result.outcome != FleetOutcome.OK else [])
        for name in events:
            body = message_for(name, result, self._fleet)
            for hook in self._hooks:
                if name in hook.events:
                    self._tasks.append(asyncio.create_task(self._send(hook, name, body)))

    def post(self, body: dict[str, Any], *, failure: bool = False) -> None:
        """Queue a prepared ``body`` (a rollout event, docs/rollouts.md) to every webhook that
        subscribes to ``rollout`` (and to ``failure`` ones when ``failure``)."""
        name = str(body.get("event", "rollout"))
        body = {**body, "fleet": self._fleet, "ts": now_iso()}
        for hook in self._hooks:
            if "rollout" in hook.events or (failure and "failure" in hook.events):
                self._tasks.append(asyncio.create_task(self._send(hook, name, body)))

    async def drain(self) -> list[Delivery]:
        """Wait for every delivery in flight (each bounded by its timeout); report them."""
        try:
            done = list(await asyncio.gather(*self._tasks)) if self._tasks else []
        finally:
            self._tasks = []
            if self._session is not None:
                await self._session.close()
                self._session = None
        return done

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(trust_env=False)
        return self._session

    async def _send(self, hook: WebhookSpec, event: str, body: dict[str, Any]) -> Delivery:
        where = redact_webhook(hook.url)
        data = json.dumps(body).encode()
        try:
            async with self._client().post(
                hook.url,
                data=data,
                headers={"Content-Type": "application/json"},
                timeout=aiohttp.ClientTimeout(total=hook.timeout_s),
                allow_redirects=False,
            ) as resp:
                await resp.content.read(4096)
                ok, detail = 200 <= resp.status < 300, f"HTTP {resp.status}"
        except TimeoutError:
            ok, detail = False, f"no answer within {hook.timeout_s} s"
        except (aiohttp.ClientError, OSError) as exc:
            ok, detail = False, str(exc) or type(exc).__name__
        delivery = Delivery(where, event, ok, detail)
        self._sink(
            {
                "ts": now_iso(),
                "event": "notify.sent" if ok else "notify.failed",
                "webhook": where,
                "notification": event,
                "detail": detail,
            }
        )
        return delivery
