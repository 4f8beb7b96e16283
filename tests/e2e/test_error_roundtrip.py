"""The error contract across the wire: a real daemon refuses, the client raises the same class.

For every code of the error registry (agent/errors.py) that a daemon can produce, one case makes a
real ``cutover-agent serve`` on 127.0.0.1 refuse a real request (signed with a real key, real
packages) and asserts that :class:`AgentClient` raises exactly the registered class, with the
registry code as ``kind`` and the agent's reason as ``code``, as a local caller would see it.
Synchronous refusals come back as the HTTP answer; failed operations through
``OperationRecord.raise_for_error`` (or ``Event.raise_for_error`` when the agent is gone).

Codes that no daemon produces are listed, each with the reason, so nothing is skipped silently:
:data:`LOCAL_ONLY` (raised on the controller or CLI side), :data:`ROOTS` (abstract bases), and
:data:`BUG_ONLY` (needs a bug in the agent). ``test_every_registry_code_is_accounted_for`` keeps
the four sets equal to the registry.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import pytest

from cutover.agent.api_models import Accepted
from cutover.agent.errors import REGISTRY, CutoverError
from cutover.agent.host.lock import AppLock
from cutover.agent.package.container import read_package
from cutover.controller.client import AgentClient
from cutover.controller.transport import AiohttpTransport, SignedRequest, TransportResponse
from tests.agent.conftest import Kit, compress, entries_for, file_entry, reg, tar_bytes
from tests.e2e.conftest import APP, SLOW_VERSION, Agent, Keys, _build, free_port

pytestmark = pytest.mark.e2e

LOCAL_ONLY = {
    "bad_key": "key files are read by the CLIs and at agent start; the API never takes a key",
    "bad_config": "a bad config stops `serve` at start and is logged (old config kept) on reload",
    "partial": "the controller's verdict over several hosts; one agent only knows itself",
    "unreachable": "raised by the client when no agent answers: covered by the case below",
}
ROOTS = {
    "error": "CutoverError itself is never raised, only its subclasses",
    "rejected": "RejectedError itself is never raised, only its subclasses",
}
BUG_ONLY = {
    "internal": "an unexpected exception in a handler or an operation; its wire round trip is "
    "tests/agent/test_errors.py::test_wire_body_round_trip_gives_the_same_class_and_code",
}

Unchanged = Literal["everything", "releases", "nothing"]


@dataclass
class Env:
    agent: Agent
    client: AgentClient
    tmp: Path
    keys: Keys
    packages: dict[str, Path]

    def build(self, version: str, toml: str = "") -> Path:
        out = self.tmp / f"built-{version}-{hashlib.sha256(toml.encode()).hexdigest()[:8]}"
        out.mkdir(parents=True, exist_ok=True)
        return _build(out, version, self.keys.release, toml)

    def kit(self) -> Kit:
        d = self.tmp / f"kit{len(list(self.tmp.glob('kit*')))}"
        d.mkdir()
        return Kit(d)

    def crafted(self, payload: bytes, entries: list[dict[str, Any]], **fields: Any) -> Path:
        """A package signed by the trusted release key around a hand-made payload."""
        fields.setdefault("version", "9.0.0")
        return self.kit().package(payload, entries, app=APP, signers=[self.keys.release], **fields)


async def _finish(client: AgentClient, accepted: Accepted) -> None:
    """Follow an operation to its end; raise its error as the registry's class."""
    (await client.wait(accepted.operation)).raise_for_error()


async def _staged(env: Env, *versions: str) -> None:
    for v in versions:
        await _finish(env.client, await env.client.upload(APP, v, env.packages[v]))


async def _active(env: Env, *versions: str) -> None:
    await _staged(env, *versions)
    for v in versions:
        await _finish(env.client, await env.client.activate(APP, v))


async def _upload(env: Env, package: Path, version: str) -> None:
    await _finish(env.client, await env.client.upload(APP, version, package))


def _hook(phase: str, argv: list[str]) -> str:
    return f'[[hooks.{phase}]]\nname = "{phase}-hook"\nargv = {json.dumps(argv)}\ntimeout_s = 30\n'


def _check(phase: str) -> str:
    return (
        f"[health.{phase}]\ninterval_s = 0.1\nretries = 0\nhealthy_deadline_s = 2\n"
        f'[[health.{phase}.checks]]\ntype = "command"\nargv = ["false"]\n'
    )


# ---------------------------------------------------------------------- the cases
Produce = Callable[[Env], Awaitable[None]]


@dataclass(frozen=True)
class Case:
    reason: str  # the instance code the client must carry (the registry code or a finer one)
    refuse: Produce  # must raise
    setup: Produce | None = None
    unchanged: Unchanged = "everything"  # what the refusal must leave as it was
    settings: dict[str, Any] | None = None  # agent settings for this case
    stops_agent: bool = False  # the case ends the agent (it must still exit 0)


async def _unsigned_key(env: Env) -> None:
    async with env.agent.client(env.keys.stranger) as stranger:
        await stranger.apps()


async def _bad_limit(env: Env) -> None:
    await env.client.journal(APP, limit=0)


async def _patch(env: Env) -> None:
    await env.client.request("PATCH", f"/v1/apps/{APP}")


async def _stalled_body(env: Env) -> None:
    body = b'{"version": "1.0.0"}'
    sent_all = asyncio.Event()

    async def chunks() -> AsyncIterator[bytes]:
        yield body[:5]
        await sent_all.wait()  # never: the agent's idle timeout (1 s here) answers first
        yield body[5:]

    try:
        await env.client.request(
            "POST",
            f"/v1/apps/{APP}/activate",
            content=chunks(),
            content_type="application/json",
            content_sha256=hashlib.sha256(body).digest(),
            content_length=len(body),
        )
    finally:
        sent_all.set()


async def _oversized_body(env: Env) -> None:
    body = b'{"version": "1.0.0", "pad": "' + b"x" * (80 * 1024) + b'"}'
    await env.client.request(
        "POST", f"/v1/apps/{APP}/activate", content=body, content_type="application/json"
    )


async def _wrong_media_type(env: Env) -> None:
    await env.client.request(
        "POST",
        f"/v1/apps/{APP}/activate",
        content=b'{"version": "1.0.0"}',
        content_type="text/plain",
    )


class _ExpectingTransport:
    """The real transport, with an ``Expect`` the agent does not support added to each request."""

    def __init__(self) -> None:
        self.inner = AiohttpTransport()

    async def send(self, request: SignedRequest) -> TransportResponse:
        headers = {**request.headers, "Expect": "200-ok"}
        return await self.inner.send(dataclasses.replace(request, headers=headers))

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _unknown_expectation(env: Env) -> None:
    client = AgentClient(env.agent.base_url, env.keys.deploy, transport=_ExpectingTransport())
    async with client:
        await client.activate(APP, "1.0.0")


async def _resume_at_a_wrong_offset(env: Env) -> None:
    """A resumed upload (agent/daemon/uploads.py) at an offset the agent does not hold."""
    sha = hashlib.sha256(env.packages["1.0.0"].read_bytes()).hexdigest()
    await env.client.request(
        "PUT",
        f"/v1/apps/{APP}/releases/1.0.0",
        query=f"sha256={sha}&offset=7",
        content=b"tail",
        content_type="application/octet-stream",
    )


async def _unknown_app(env: Env) -> None:
    await env.client.app("nope")


async def _flock_held(env: Env) -> None:
    lock = AppLock(env.agent.meta / "lock", APP, "cli activate 1.0.0")
    lock.acquire()
    try:
        await env.client.activate(APP, "1.0.0")
    finally:
        lock.release()


async def _nothing_to_roll_back(env: Env) -> None:
    await _finish(env.client, await env.client.rollback(APP))


async def _corrupt_state(env: Env) -> None:
    (env.agent.meta / "state.json").write_text('{"format": 1, "app": "demo", "releases": 7}\n')


async def _read_app(env: Env) -> None:
    await env.client.app(APP)


async def _garbage_package(env: Env) -> None:
    path = env.tmp / "garbage.cutover"
    path.write_bytes(b"this is not a tar archive\n" * 100)
    await _upload(env, path, "1.0.0")


async def _bad_manifest(env: Env) -> None:
    members = [reg("index.php", "<?php\n")]
    entries = [*entries_for(members), file_entry("../evil.php", "x")]
    await _upload(env, env.crafted(compress(tar_bytes(members)), entries), "9.0.0")


async def _untrusted_signer(env: Env) -> None:
    src = env.tmp / "stranger"
    src.mkdir()
    await _upload(env, _build(src, "1.0.0", env.keys.stranger), "1.0.0")


async def _expired(env: Env) -> None:
    members = [reg("index.php", "<?php\n")]
    past = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    pkg = env.crafted(compress(tar_bytes(members)), entries_for(members), expires_at=past)
    await _upload(env, pkg, "9.0.0")


async def _wrong_version(env: Env) -> None:
    await _upload(env, env.packages["1.0.0"], "1.1.0")


async def _same_version_new_content(env: Env) -> None:
    await _upload(env, env.build("1.0.0", "# a rebuild with other bytes\n"), "1.0.0")


async def _older(env: Env) -> None:
    await _upload(env, env.packages["1.0.0"], "1.0.0")


async def _escaping_member(env: Env) -> None:
    listed = [reg("index.php", "<?php\n"), reg("README.md", "hi\n")]
    members = [listed[0], reg("../../outside/pwned.txt", "x")]
    await _upload(env, env.crafted(compress(tar_bytes(members)), entries_for(listed)), "9.0.0")


async def _bomb(env: Env) -> None:
    members = [reg("index.php", "<?php\n")]
    raw = tar_bytes(members) + bytes(32 << 20)  # 32 MiB of zeros past the end of the archive
    await _upload(env, env.crafted(compress(raw), entries_for(members)), "9.0.0")


async def _flipped_payload(env: Env) -> None:
    data = bytearray(env.packages["1.0.0"].read_bytes())
    with env.packages["1.0.0"].open("rb") as fh:
        parts = read_package(fh, len(data))
    data[parts.payload_offset + parts.payload_size // 2] ^= 0xFF
    path = env.tmp / "flipped.cutover"
    path.write_bytes(bytes(data))
    await _upload(env, path, "1.0.0")


async def _tampered_runtime_spec(env: Env) -> None:
    spec = env.agent.meta / "manifests" / "1.1.0.runtime.json"
    spec.write_bytes(spec.read_bytes().replace(b"}", b" }", 1))  # same meaning, other digest
    await _activate_1_1(env)


async def _failing_stage_hook(env: Env) -> None:
    await _upload(env, env.build("1.0.0", _hook("stage", ["false"])), "1.0.0")


async def _failing_staged_check(env: Env) -> None:
    await _upload(env, env.build("1.0.0", _check("staged")), "1.0.0")


async def _live_check_that_fails(env: Env) -> None:
    await _active(env, "1.0.0")
    await _upload(env, env.build("1.1.0", _check("live")), "1.1.0")


async def _activate_1_1(env: Env) -> None:
    await _finish(env.client, await env.client.activate(APP, "1.1.0"))


async def _rollback_hook_fails(env: Env) -> None:
    await _upload(env, env.build("1.0.0", _hook("post_rollback", ["false"])), "1.0.0")
    await _finish(env.client, await env.client.activate(APP, "1.0.0"))
    await _active(env, "1.1.0")


async def _roll_back(env: Env) -> None:
    await _finish(env.client, await env.client.rollback(APP))


NOWHERE_PORT = free_port()  # nothing listens there; fetch_allow lists it (loopback is refused)


async def _fetch_from_nowhere(env: Env) -> None:
    url = f"http://127.0.0.1:{NOWHERE_PORT}/demo-1.0.0.cutover"
    await _finish(env.client, await env.client.fetch(APP, "1.0.0", url))


async def _agent_gone(env: Env) -> None:
    assert await asyncio.to_thread(env.agent.stop) == 0
    await env.client.apps()


async def _slow_activation(env: Env) -> Accepted:
    await _active(env, "1.0.0")
    await _staged(env, SLOW_VERSION)
    accepted = await env.client.activate(APP, SLOW_VERSION)
    await _until(lambda: (env.agent.root / "shared" / "hook-started").exists())
    return accepted


async def _new_work_while_draining(env: Env) -> None:
    await _slow_activation(env)
    await env.client.apps()  # a kept-alive connection: new connections are closed at SIGTERM
    os.kill(env.agent.pid, signal.SIGTERM)
    await _until(lambda: any(e.get("event") == "draining" for e in env.agent.log_events()))
    try:
        await env.client.rollback(APP)
    finally:
        (env.agent.root / "shared" / "hook-release").touch()  # let the drain finish


async def _stopped_mid_operation(env: Env) -> None:
    """The follower's stream is the only witness: the record dies with the agent."""
    accepted = await _slow_activation(env)
    async with (
        env.agent.client() as follower,
        contextlib.aclosing(follower.events(accepted.operation)) as events,
    ):
        await anext(events)  # streaming: this connection outlives the listening socket
        os.kill(env.agent.pid, signal.SIGTERM)  # drain 1 s, then cancel: reverted
        async for event in events:
            event.raise_for_error()


async def _until(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


def _freeze_around_now() -> str:
    """A dated freeze window from a day before the real now to a day after (built around the
    clock, not always-on; the window rules themselves: tests/agent/test_freeze.py)."""
    now = datetime.now(UTC)
    t0, t1 = (f"{t:%Y-%m-%dT%H:%M:%SZ}" for t in (now - timedelta(days=1), now + timedelta(days=1)))
    return f'[[apps.{APP}.freeze.dated]]\nname = "around-now"\nfrom = {t0}\nto = {t1}'


CASES: dict[str, Case] = {
    "unauthorized": Case("unknown_key", _unsigned_key),
    "bad_request": Case("bad_request", _bad_limit),
    "method_not_allowed": Case("method_not_allowed", _patch),
    "body_timeout": Case("body_timeout", _stalled_body),
    "payload_too_large": Case("payload_too_large", _oversized_body),
    "unsupported_media_type": Case("unsupported_media_type", _wrong_media_type),
    "not_found": Case("not_found", _unknown_app),
    "locked": Case("locked", _flock_held, setup=lambda env: _staged(env, "1.0.0")),
    "invalid_state": Case("invalid_state", _nothing_to_roll_back, unchanged="releases"),
    "frozen": Case(
        "frozen",
        _activate_1_1,
        setup=lambda env: _staged(env, "1.1.0"),
        unchanged="releases",
        settings={"app_toml": _freeze_around_now()},
    ),
    "storage": Case("storage", _read_app, setup=_corrupt_state),
    "bad_package": Case("bad_package", _garbage_package, unchanged="releases"),
    "bad_manifest": Case("bad_manifest", _bad_manifest, unchanged="releases"),
    "bad_signature": Case("untrusted", _untrusted_signer, unchanged="releases"),
    "expired": Case("expired", _expired, unchanged="releases"),
    "mismatch": Case("version_mismatch", _wrong_version, unchanged="releases"),
    "version_exists": Case(
        "version_exists",
        _same_version_new_content,
        setup=lambda env: _staged(env, "1.0.0"),
        unchanged="releases",
    ),
    "downgrade": Case(
        "downgrade", _older, setup=lambda env: _staged(env, "1.1.0"), unchanged="releases"
    ),
    "unsafe_archive": Case("unsafe_path", _escaping_member, unchanged="releases"),
    "archive_limit": Case("too_many_bytes", _bomb, unchanged="releases"),
    # the package has payload.chunks: the flipped byte's chunk is refused before decompression
    "digest_mismatch": Case("chunk_digest", _flipped_payload, unchanged="releases"),
    "drift": Case(
        "drift",
        _tampered_runtime_spec,
        setup=lambda env: _staged(env, "1.1.0"),
        unchanged="nothing",
    ),
    "hook_failed": Case("hook_failed", _failing_stage_hook, unchanged="releases"),
    "health_failed": Case("health_failed", _failing_staged_check, unchanged="releases"),
    "reverted": Case("reverted", _activate_1_1, setup=_live_check_that_fails, unchanged="releases"),
    "failed": Case("failed", _roll_back, setup=_rollback_hook_fails, unchanged="nothing"),
    "transport": Case(
        "transport",
        _fetch_from_nowhere,
        unchanged="releases",
        settings={"fetch_allow": [f"http://127.0.0.1:{NOWHERE_PORT}/"]},
    ),
    "expectation_failed": Case("expectation_failed", _unknown_expectation),
    "upload_offset": Case("upload_offset", _resume_at_a_wrong_offset),
    "unreachable": Case("unreachable", _agent_gone, stops_agent=True),
    "unavailable": Case(
        "shutting_down",
        _new_work_while_draining,
        unchanged="nothing",
        settings={"drain_timeout_s": 30.0},
        stops_agent=True,
    ),
    "cancelled": Case(
        "cancelled",
        _stopped_mid_operation,
        unchanged="nothing",
        settings={"drain_timeout_s": 1.0},
        stops_agent=True,
    ),
}
LOCAL_ONLY.pop("unreachable")  # produced above: the client's own verdict on a stopped agent


def test_every_registry_code_is_accounted_for() -> None:
    """Each code is produced over the wire below, or listed with the reason it cannot be."""
    groups = [set(CASES), set(LOCAL_ONLY), set(ROOTS), set(BUG_ONLY)]
    assert sum(len(g) for g in groups) == len(set().union(*groups)), "a code is in two lists"
    assert set().union(*groups) == set(REGISTRY)


def _comparable(snapshot: dict[str, Any], unchanged: Unchanged) -> dict[str, Any]:
    if unchanged == "everything":
        return snapshot
    always = {"incoming": snapshot["incoming"], "uploads": snapshot["uploads"]}
    if unchanged == "releases":
        return {**always, "current": snapshot["current"], "releases": snapshot["releases"]}
    return always


@pytest.mark.parametrize("code", list(CASES))
async def test_the_client_raises_the_class_the_daemon_refused_with(
    code: str, make_agent: Any, keys: Keys, packages: dict[str, Path], tmp_path: Path
) -> None:
    case = CASES[code]
    agent: Agent = make_agent(**(case.settings or {}))
    agent.start()
    async with agent.client() as client:
        env = Env(agent, client, tmp_path / "work", keys, packages)
        env.tmp.mkdir()
        if case.setup is not None:
            await case.setup(env)
        before = _comparable(agent.snapshot(), case.unchanged)
        with pytest.raises(CutoverError) as info:
            await case.refuse(env)
    exc = info.value
    expected = REGISTRY[code].cls
    assert type(exc) is expected, f"{type(exc).__name__} ({exc.code}): {exc}"
    assert (exc.kind, exc.code) == (code, case.reason), str(exc)
    assert exc.exit_code == REGISTRY[code].exit_code
    if case.stops_agent:  # it exits by itself, cleanly, and what it leaves is compared
        assert agent.proc is not None
        assert await asyncio.to_thread(agent.proc.wait, 60) == 0, agent.log_text()
    else:
        assert agent.proc is not None and agent.proc.poll() is None, agent.log_text()
    assert _comparable(agent.snapshot(), case.unchanged) == before
