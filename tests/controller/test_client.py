"""AgentClient through an injected transport: a fake *remote* agent (unit test), real keys.

The fake peer verifies every request with the agent's real verifier (agent/trust/httpsig.py), so
these tests prove what the client puts on the wire as well as how it reads the answers. The
real daemon is exercised end to end in tests/e2e (test_api_flow, test_error_roundtrip).
"""

from __future__ import annotations

import hashlib
import json
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.errors import (
    ActivationFailedError,
    AuthError,
    DowngradeError,
    LockedError,
    PayloadTooLargeError,
    SignatureError,
    TransportError,
    UnreachableError,
)
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.agent.trust import httpsig
from cutover.controller import AgentClient, AppsList, OperationRecord
from cutover.controller.transport import AiohttpTransport, SignedRequest, TransportResponse

BASE = "http://web-1.example.net:7801"
AUTHORITY = "web-1.example.net:7801"

Answer = tuple[int, bytes] | Exception


@dataclass
class FakeAgent:
    """A remote agent that checks each request's signature and answers from a script."""

    key: PrivateKey
    answers: dict[tuple[str, str], list[Answer]]
    chunk_bytes: int = 7  # answers arrive in odd pieces, as over a real socket
    seen: list[tuple[SignedRequest, bytes]] = field(default_factory=list)
    closed: bool = False

    async def send(self, request: SignedRequest) -> TransportResponse:
        body = b""
        if isinstance(request.body, bytes):
            body = request.body
        elif request.body is not None:
            body = b"".join([chunk async for chunk in request.body])
        self.seen.append((request, body))
        path, query = request.url.raw_path, request.url.raw_query_string
        verified = httpsig.verify_request(
            httpsig.RequestTarget(request.method, AUTHORITY, path, query),
            request.headers,
            keys={self.key.keyid: self.key.public},
            now=time.time(),
        )
        assert verified.content_digest == hashlib.sha256(body).digest()
        answer = self.answers[(request.method, path)].pop(0)
        if isinstance(answer, Exception):
            raise answer
        status, data = answer

        async def stream() -> AsyncIterator[bytes]:
            for i in range(0, len(data), self.chunk_bytes):
                yield data[i : i + self.chunk_bytes]

        return TransportResponse(status, {"content-type": "application/json"}, stream())

    async def aclose(self) -> None:
        self.closed = True


def _json(status: int, body: Any) -> tuple[int, bytes]:
    return status, json.dumps(body).encode()


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> PrivateKey:
    return generate_keypair(tmp_path_factory.mktemp("keys") / "deploy")


@pytest.fixture
def peer(key: PrivateKey) -> Callable[..., tuple[FakeAgent, AgentClient]]:
    def make(answers: dict[tuple[str, str], list[Answer]]) -> tuple[FakeAgent, AgentClient]:
        fake = FakeAgent(key, answers)
        return fake, AgentClient(BASE, key, transport=fake)

    return make


RECORD = {
    "id": "0fefcd7c1eddeb51",
    "op": "activate",
    "app": "ame",
    "version": "2026.03.8",
    "actor": "api:deploy/2367211de3b2eed0",
    "status": "running",
    "phase": "run",
    "created_at": "2026-03-07T10:02:11.120Z",
    "finished_at": None,
    "duration_s": None,
    "result": None,
    "error": None,
    "events": 1,
    "dropped_events": 0,
}


async def test_answers_are_typed_and_unknown_fields_are_kept(peer: Any) -> None:
    fake, client = peer(
        {
            ("GET", "/v1/apps"): [
                _json(
                    200,
                    {
                        "agent": {"name": AUTHORITY, "version": "0.1.0"},
                        "apps": [
                            {
                                "app": "ame",
                                "root": "/srv/ame",
                                "current": "2026.03.7",
                                "staged": ["2026.03.8"],
                                "lease": None,
                            },
                            {"app": "broken", "root": "/srv/broken", "error": "state invalid"},
                        ],
                    },
                )
            ],
        }
    )
    async with client:
        apps = await client.apps()
    assert isinstance(apps, AppsList) and apps.agent.name == AUTHORITY
    ame, broken = apps.apps
    assert (ame.current, ame.staged, ame.previous) == ("2026.03.7", ["2026.03.8"], None)
    assert ame.model_extra == {"lease": None}
    assert broken.error == "state invalid" and broken.current is None
    assert fake.closed  # the client closes the transport it was given


@pytest.mark.parametrize(
    ("status", "body", "expected", "code"),
    [
        pytest.param(
            422, {"error": "downgrade", "kind": "downgrade"}, DowngradeError, "downgrade", id="422"
        ),
        pytest.param(
            401, {"error": "replayed", "kind": "unauthorized"}, AuthError, "replayed", id="401"
        ),
        pytest.param(
            413,
            {"error": "payload_too_large", "kind": "payload_too_large"},
            PayloadTooLargeError,
            "payload_too_large",
            id="413",
        ),
        pytest.param(502, None, TransportError, "http_502", id="proxy-502-not-json"),
    ],
)
async def test_error_answers_raise_the_registry_class_with_the_same_code(
    peer: Any, status: int, body: Any, expected: type[Exception], code: str
) -> None:
    raw = (status, b"<html>bad gateway</html>") if body is None else _json(status, body)
    _, client = peer({("POST", "/v1/apps/ame/activate"): [raw]})
    async with client:
        with pytest.raises(expected) as info:
            await client.activate("ame", "2026.03.8")
    assert type(info.value) is expected and info.value.code == code  # type: ignore[attr-defined]
    assert str(info.value).startswith(f"{BASE} POST /v1/apps/ame/activate: ")


async def test_locked_answer_carries_the_holder(peer: Any) -> None:
    holder = {"operation": "activate", "id": "5e0c1f3a9b7d2e44", "agent": "api"}
    _, client = peer(
        {
            ("POST", "/v1/apps/ame/rollback"): [
                _json(
                    409, {"error": "locked", "kind": "locked", "message": "busy", "holder": holder}
                )
            ]
        }
    )
    async with client:
        with pytest.raises(LockedError) as info:
            await client.rollback("ame", to="2026.03.6")
    assert info.value.holder == holder


async def test_unreachable_from_the_transport_reaches_the_caller_unchanged(peer: Any) -> None:
    fake, client = peer({("GET", "/v1/apps/ame"): [UnreachableError("connection refused")]})
    async with client:
        with pytest.raises(UnreachableError, match="connection refused"):
            await client.app("ame")
    assert len(fake.seen) == 1


async def test_an_answer_that_is_not_the_model_is_a_transport_error(peer: Any) -> None:
    _, client = peer({("GET", "/v1/operations/0fefcd7c1eddeb51"): [_json(200, {"id": 3})]})
    async with client:
        with pytest.raises(TransportError, match="not a OperationRecord"):
            await client.operation("0fefcd7c1eddeb51")


async def test_wait_follows_events_then_raises_the_operation_error(peer: Any) -> None:
    """Events split across chunks are reassembled; the final record's error is the class."""
    failed = {
        **RECORD,
        "status": "failed",
        "error": {"error": "reverted", "kind": "reverted", "message": "live check failed"},
    }
    lines = [
        {"seq": 1, "ts": "t", "event": "operation.start", "op": "activate", "app": "ame"},
        {"seq": 2, "ts": "t", "event": "health.check", "phase": "live", "status": "fail"},
        {"seq": 3, "ts": "t", "event": "operation.done", "status": "failed", "error": None},
    ]
    stream = b"".join(json.dumps(e).encode() + b"\n" for e in lines)
    _, client = peer(
        {
            ("GET", "/v1/operations/0fefcd7c1eddeb51/events"): [(200, stream), (200, stream)],
            ("GET", "/v1/operations/0fefcd7c1eddeb51"): [_json(200, failed)],
        }
    )
    async with client:
        events = [e async for e in client.events("0fefcd7c1eddeb51")]
        record = await client.wait("0fefcd7c1eddeb51")
    assert [e.event for e in events] == ["operation.start", "health.check", "operation.done"]
    assert events[1].phase == "live" and events[1].status == "fail"
    assert isinstance(record, OperationRecord) and record.status == "failed"
    with pytest.raises(ActivationFailedError) as info:
        record.raise_for_error()
    assert info.value.code == "reverted" and "live check failed" in str(info.value)


async def test_upload_streams_the_file_with_its_signed_digest(peer: Any, tmp_path: Path) -> None:
    package = tmp_path / "ame-1.cutover"
    package.write_bytes(b"x" * 3_000_001)
    accepted = {
        "operation": "0fefcd7c1eddeb51",
        "op": "stage",
        "app": "ame",
        "version": "1",
        "status": "running",
        "links": {"self": "/v1/operations/x", "events": "/v1/operations/x/events"},
    }
    sha = hashlib.sha256(package.read_bytes()).hexdigest()
    nothing_held = {"app": "ame", "version": "1", "sha256": sha, "offset": 0, "busy": False}
    fake, client = peer(
        {
            ("GET", f"/v1/apps/ame/releases/1/upload/{sha}"): [_json(200, nothing_held)],
            ("PUT", "/v1/apps/ame/releases/1"): [_json(202, accepted)],
        }
    )
    progress: list[int] = []
    async with client:
        got = await client.upload(
            "ame", "1", package, progress=lambda sent, _: progress.append(sent)
        )
    (probe, probe_body), (request, body) = fake.seen  # it asks what the agent holds first
    assert (probe.method, probe_body) == ("GET", b"")
    assert request.method == "PUT" and request.url.raw_query_string == ""
    assert body == package.read_bytes()  # the fake peer checked its digest against the signature
    assert request.headers["Content-Length"] == str(len(body))
    assert request.headers["Content-Type"] == "application/octet-stream"
    assert request.headers["Expect"] == "100-continue"  # over 1 MiB: ask before sending
    assert got.operation == "0fefcd7c1eddeb51" and got.links.self_ == "/v1/operations/x"
    assert progress[-1] == len(body)


async def test_a_failed_signature_check_by_the_peer_is_the_agents_401(peer: Any) -> None:
    """The fake peer refuses like the agent does; the client raises the same AuthError."""
    _, client = peer(
        {
            ("GET", "/v1/apps"): [
                _json(401, {"error": "unknown_key", "kind": "unauthorized", "message": "who?"})
            ]
        }
    )
    async with client:
        with pytest.raises(AuthError) as info:
            await client.apps()
    assert info.value.code == "unknown_key" and not isinstance(info.value, SignatureError)


def test_tls_options_belong_to_the_default_transport(key: PrivateKey) -> None:
    with pytest.raises(ValueError, match="default transport"):
        AgentClient(BASE, key, transport=AiohttpTransport(), fingerprint="00" * 32)


async def test_default_transport_says_unreachable_for_a_closed_port(key: PrivateKey) -> None:
    """A real socket: nothing listens on the port, so the host is unreachable (not a 5xx)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, never listening: connections are refused
        async with AgentClient(f"http://127.0.0.1:{port}", key) as client:
            with pytest.raises(UnreachableError) as info:
                await client.apps()
    assert info.value.code == "unreachable" and f"127.0.0.1:{port}" in str(info.value)


@pytest.mark.parametrize(("status", "error"), [(404, "not_found"), (405, "method_not_allowed")])
async def test_an_agent_without_the_resume_query_gets_the_whole_file_again(
    peer: Any, tmp_path: Path, status: int, error: str
) -> None:
    """An older agent (no GET .../upload/{sha256}): the next attempt is a full PUT, and the
    reason the first one ended is the one told."""
    package = tmp_path / "ame-1.cutover"
    package.write_bytes(b"y" * 5000)
    sha = hashlib.sha256(package.read_bytes()).hexdigest()
    accepted = {
        "operation": "0fefcd7c1eddeb51",
        "op": "stage",
        "app": "ame",
        "version": "1",
        "status": "running",
        "links": {"self": "/v1/operations/x", "events": "/v1/operations/x/events"},
    }
    refusal = _json(status, {"error": error, "kind": error, "message": "no such route"})
    fake, client = peer(
        {
            ("PUT", "/v1/apps/ame/releases/1"): [
                TransportError("connection reset mid-body"),
                _json(202, accepted),
            ],
            ("GET", f"/v1/apps/ame/releases/1/upload/{sha}"): [refusal, refusal],
        }
    )
    resumed: list[tuple[int, int, str]] = []
    async with client:
        got = await client.upload("ame", "1", package, on_resume=lambda *a: resumed.append(a))
    assert got.operation == "0fefcd7c1eddeb51"
    assert resumed == [(2, 0, "connection reset mid-body")]
    puts = [(r, b) for r, b in fake.seen if r.method == "PUT"]
    assert len(puts) == 2 and puts[1][1] == package.read_bytes()
    assert puts[1][0].url.raw_query_string == ""  # a plain upload, as the old agent knows
