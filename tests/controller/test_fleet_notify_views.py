"""Webhooks against real HTTP servers on 127.0.0.1; the status and log views (pure)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from cutover.controller.fleet.agents import AppView, JournalEntry
from cutover.controller.fleet.inventory import HostSpec, WebhookSpec
from cutover.controller.fleet.notify import Notifier, message_for, redact_webhook
from cutover.controller.fleet.results import FleetResult, HostResult, HostStatus
from cutover.controller.fleet.views import Unreadable, merge_journals, status_rows


def _result(*statuses: HostStatus) -> FleetResult:
    hosts = [
        HostResult(host=f"web-{i}", url=f"http://w{i}", action="push", status=s,
                   error=None if s.succeeded else "untrusted", message="m")
        for i, s in enumerate(statuses, 1)
    ]  # fmt: skip
    return FleetResult.of("push", "ame", "2.0", hosts)


@pytest.fixture
async def receiver() -> AsyncIterator[tuple[str, list[dict[str, Any]], asyncio.Event]]:
    got: list[dict[str, Any]] = []
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        got.append(
            {"path": request.path, "body": await request.json(), "ctype": request.content_type}
        )
        return web.Response(status=204)

    async def broken(request: web.Request) -> web.Response:
        return web.Response(status=500, text="boom")

    async def stuck(request: web.Request) -> web.Response:
        await release.wait()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/ok/{secret}", ok)
    app.router.add_post("/broken", broken)
    app.router.add_post("/stuck", stuck)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}", got, release
    release.set()
    await runner.cleanup()


async def test_notifications_are_delivered_and_failures_reported(
    receiver: tuple[str, list[dict[str, Any]], asyncio.Event],
) -> None:
    base, got, _release = receiver
    hooks = [
        WebhookSpec(url=f"{base}/ok/T0-secret"),
        WebhookSpec(url=f"{base}/ok/failures-only", events=["failure"]),
        WebhookSpec(url=f"{base}/broken"),
        WebhookSpec(url=f"{base}/stuck", timeout_s=0.5),
    ]
    events: list[dict[str, Any]] = []
    notifier = Notifier(hooks, "fleet.toml", events.append)
    notifier.notify("push", _result(HostStatus.OK, HostStatus.REFUSED))
    deliveries = await notifier.drain()

    bodies = sorted((g["path"], g["body"]["event"]) for g in got)
    assert bodies == [
        ("/ok/T0-secret", "failure"),
        ("/ok/T0-secret", "push"),
        ("/ok/failures-only", "failure"),
    ]
    assert all(g["ctype"] == "application/json" for g in got)
    push = next(g["body"] for g in got if g["body"]["event"] == "push")
    assert push["outcome"] == "partial" and push["counts"]["refused"] == 1
    assert push["text"].startswith("⚠️ cutover push ame 2.0: partial (1/2 hosts ok)")
    assert "web-2 refused (untrusted)" in push["text"]
    failed = {
        (e["webhook"], e["notification"], e["detail"])
        for e in events
        if e["event"] == "notify.failed"
    }
    host = base.removeprefix("http://")
    assert (f"http://{host}/…", "push", "HTTP 500") in failed
    assert (f"http://{host}/…", "push", "no answer within 0.5 s") in failed
    assert len(deliveries) == 7 and sum(d.ok for d in deliveries) == 3
    assert "secret" not in json.dumps(events)


async def test_a_webhook_nobody_listens_on_is_reported_not_raised() -> None:
    events: list[dict[str, Any]] = []
    notifier = Notifier([WebhookSpec(url="http://127.0.0.1:9/x")], "f", events.append)
    notifier.notify("deploy", _result(HostStatus.OK))
    [delivery] = await notifier.drain()
    assert not delivery.ok and events[0]["event"] == "notify.failed"


def test_message_text_for_a_clean_run_and_redaction() -> None:
    body = message_for("deploy", _result(HostStatus.OK, HostStatus.UNCHANGED), "prod.toml")
    assert body["text"] == "✅ cutover push ame 2.0: ok (2/2 hosts ok)"
    assert body["fleet"] == "prod.toml" and body["event"] == "deploy"
    assert redact_webhook("https://hooks.slack.com/services/T/B/X") == "https://hooks.slack.com/…"


def _view(current: str | None, health: str = "pass") -> AppView:
    return AppView.model_validate(
        {"app": "ame", "current": current, "previous": "0.9", "staged": ["2.0"], "busy": None,
         "releases": [{"version": current or "x", "status": "active", "health": [{"phase": "live", "status": health}]}],
         "unknown_field": 1}
    )  # fmt: skip


def test_status_marks_the_odd_host_of_a_group_as_drift() -> None:
    hosts = [
        HostSpec(name="w1", url="http://w1", groups=["web"]),
        HostSpec(name="w2", url="http://w2", groups=["web"]),
        HostSpec(name="w3", url="http://w3", groups=["web", "canary"]),
        HostSpec(name="w4", url="http://w4", groups=["web"]),
        HostSpec(name="db", url="http://db", groups=["db"]),
    ]
    views: dict[str, AppView | str] = {
        "w1": _view("1.1"), "w2": _view("1.1"), "w3": _view("1.0", "fail"),
        "w4": Unreadable(False, "unreachable: connection refused"), "db": _view(None),
    }  # fmt: skip
    rows = {r.host: r for r in status_rows(hosts, views)}
    assert rows["w3"].drift and rows["w3"].drift_groups == ["web"] and rows["w3"].expected == "1.1"
    assert rows["w3"].health == "live fail"
    assert not rows["w1"].drift and not rows["w2"].drift and not rows["db"].drift
    assert not rows["w4"].reachable and rows["w4"].error == "unreachable: connection refused"
    assert not rows["w4"].drift  # unreachable hosts neither vote nor drift


def test_log_merges_release_events_in_time_order() -> None:
    def e(seq: int, ts: str, event: str, **kw: Any) -> JournalEntry:
        return JournalEntry.model_validate(
            {"seq": seq, "ts": ts, "event": event, "prev": "0", **kw}
        )

    journals = {
        "w1": [e(1, "2026-03-07T10:00:00.000Z", "init"), e(2, "2026-03-07T10:00:02.000Z", "activate.done", version="2", actor="api:ops")],
        "w2": [e(1, "2026-03-07T10:00:01.000Z", "stage.done", version="2"), e(2, "2026-03-07T10:00:03.000Z", "activate.reverted", version="2", reason="health", checkpoint_ref="db-1")],
    }  # fmt: skip
    rows = merge_journals(journals)
    assert [(r.host, r.event) for r in rows] == [
        ("w2", "stage.done"), ("w1", "activate.done"), ("w2", "activate.reverted"),
    ]  # fmt: skip
    assert rows[1].actor == "api:ops" and rows[2].result == "reverted"
    assert rows[2].detail == "health" and rows[2].checkpoint_ref == "db-1"
    assert [r.event for r in merge_journals(journals, limit=1)] == ["activate.reverted"]
