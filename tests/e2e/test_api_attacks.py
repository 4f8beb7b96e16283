"""Hostile requests against a real agent: each is refused with the right status and reason code,
and none changes anything (state.json bytes, ``current``, releases/, journal length, incoming/,
uploads/).

One daemon serves the whole module (``demo`` 1.0.0 active, 1.1.0 staged), so a request that got
through would visibly activate, delete or stage something. Requests go over a raw socket
(:func:`send_raw`) so duplicate headers, lying lengths and trickled bodies reach the server as
written.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cutover.agent.errors import REGISTRY
from cutover.agent.keys import PrivateKey
from cutover.agent.trust import httpsig
from cutover.controller.client import signed_headers
from tests.e2e.conftest import APP, Agent, Keys, RawResponse, send_raw

pytestmark = pytest.mark.e2e

Headers = list[tuple[str, str]]


@dataclass
class Env:
    agent: Agent
    keys: Keys
    packages: dict[str, Path]

    async def send(
        self, method: str, target: str, headers: Headers, body: bytes = b"", **kw: object
    ) -> RawResponse:
        return await send_raw(self.agent.port, method, target, headers, body, **kw)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def env(
    tmp_path_factory: pytest.TempPathFactory, keys: Keys, packages: dict[str, Path]
) -> Iterator[Env]:
    agent = Agent(tmp_path_factory.mktemp("attacks"), keys)
    agent.start()

    async def prepare() -> None:
        async with agent.client() as c:
            for version in ("1.0.0", "1.1.0"):
                rec = await c.wait((await c.upload(APP, version, packages[version])).operation)
                assert rec.status == "succeeded", rec
            rec = await c.wait((await c.activate(APP, "1.0.0")).operation)
            assert rec.status == "succeeded", rec

    asyncio.run(prepare())
    yield Env(agent, keys, packages)
    assert agent.stop() == 0, agent.log_text()


def sign(
    env: Env,
    method: str,
    target: str,
    body: bytes = b"",
    *,
    key: PrivateKey | None = None,
    content_type: str | None = None,
    authority: str | None = None,
    created: int | None = None,
    nonce: str | None = None,
) -> Headers:
    path, _, query = target.partition("?")
    ctype = content_type if content_type is not None else ("application/json" if body else "")
    headers = signed_headers(
        key or env.keys.deploy,
        method,
        authority or env.agent.name,
        path,
        query,
        content_type=ctype,
        body_sha256=hashlib.sha256(body).digest(),
        created=created,
        nonce=nonce,
    )
    return list(headers.items())


def forge(
    env: Env,
    method: str,
    target: str,
    *,
    params: list[tuple[str, int | str]],
    components: tuple[str, ...] = httpsig.COMPONENTS,
) -> Headers:
    """Sign with the deploy key but with arbitrary components and parameters (no sanity checks)."""
    path, _, query = target.partition("?")
    digest = httpsig.content_digest(hashlib.sha256(b"").digest())
    values = {
        "@method": method,
        "@authority": env.agent.name,
        "@path": path,
        "@query": "?" + query,
        "content-type": "",
        "content-digest": digest,
    }
    sig_params = httpsig.serialize_signature_params(components, params)
    base = httpsig.build_signature_base([(c, values[c]) for c in components], sig_params)
    sig = base64.b64encode(env.keys.deploy.sign(base)).decode()
    return [
        ("Content-Type", ""),
        ("Content-Digest", digest),
        ("Signature-Input", f"cutover={sig_params}"),
        ("Signature", f"cutover=:{sig}:"),
    ]


def _params(created: int, expires: int, keyid: str) -> list[tuple[str, int | str]]:
    return [
        ("created", created),
        ("expires", expires),
        ("nonce", httpsig.new_nonce()),
        ("keyid", keyid),
        ("alg", "ed25519"),
        ("tag", "cutover-v1"),
    ]


def _replace(headers: Headers, name: str, fn: Callable[[str], str]) -> Headers:
    return [(k, fn(v) if k.lower() == name.lower() else v) for k, v in headers]


ACTIVATE = f"/v1/apps/{APP}/activate"
ACTIVATE_STAGED = json.dumps({"version": "1.1.0"}).encode()
UPLOAD = f"/v1/apps/{APP}/releases/1.2.0"


# ---------------------------------------------------------------------- cases
async def no_signature(env: Env) -> RawResponse:
    return await env.send("POST", ACTIVATE, [("Content-Type", "application/json")], ACTIVATE_STAGED)


async def unknown_keyid(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, key=env.keys.stranger)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def wrong_key_for_keyid(env: Env) -> RawResponse:
    impostor = PrivateKey(keyid=env.keys.deploy.keyid, key=env.keys.stranger.key)
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, key=impostor)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def release_key_as_controller_key(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, key=env.keys.release)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def read_key_attempts_deploy(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, key=env.keys.read)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def alg_confusion(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED)
    h = _replace(h, "Signature-Input", lambda v: v.replace('alg="ed25519"', 'alg="hmac-sha256"'))
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def bit_flipped_signature(env: Env) -> RawResponse:
    def flip(v: str) -> str:
        raw = bytearray(base64.b64decode(v.split(":")[1]))
        raw[10] ^= 0x01
        return f"cutover=:{base64.b64encode(bytes(raw)).decode()}:"

    h = _replace(sign(env, "POST", ACTIVATE, ACTIVATE_STAGED), "Signature", flip)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def extra_signature_parameter(env: Env) -> RawResponse:
    h = _replace(
        sign(env, "POST", ACTIVATE, ACTIVATE_STAGED), "Signature-Input", lambda v: v + ';x="1"'
    )
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def missing_signature_parameter(env: Env) -> RawResponse:
    h = _replace(
        sign(env, "POST", ACTIVATE, ACTIVATE_STAGED),
        "Signature-Input",
        lambda v: v.replace(';tag="cutover-v1"', ""),
    )
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def exact_replay(env: Env) -> RawResponse:
    body = json.dumps({"version": "1.0.0"}).encode()  # already active: the original is a no-op
    h = sign(env, "POST", ACTIVATE, body)
    first = await env.send("POST", ACTIVATE, h, body)
    assert first.status == 202, first.body
    async with env.agent.client() as c:
        await c.wait(first.json["operation"])
    return await env.send("POST", ACTIVATE, h, body)


async def replay_after_agent_restart(env: Env) -> RawResponse:
    h = sign(env, "GET", "/v1/apps")
    assert (await env.send("GET", "/v1/apps", h)).status == 200
    await asyncio.to_thread(env.agent.restart)
    return await env.send("GET", "/v1/apps", h)


async def reused_nonce_fresh_signature(env: Env) -> RawResponse:
    nonce = httpsig.new_nonce()
    assert (
        await env.send("GET", "/v1/apps", sign(env, "GET", "/v1/apps", nonce=nonce))
    ).status == 200
    target = f"/v1/apps/{APP}"
    return await env.send("GET", target, sign(env, "GET", target, nonce=nonce))


async def expired(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, created=int(time.time()) - 400)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def created_in_the_future(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, created=int(time.time()) + 120)
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def too_long_lived(env: Env) -> RawResponse:
    now = int(time.time())
    h = forge(env, "GET", "/v1/apps", params=_params(now, now + 600, env.keys.deploy.keyid))
    return await env.send("GET", "/v1/apps", h)


async def tampered_method(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/releases/1.1.0"
    return await env.send("DELETE", target, sign(env, "GET", target))


async def tampered_path(env: Env) -> RawResponse:
    h = sign(env, "DELETE", f"/v1/apps/{APP}/releases/9.9.9")
    return await env.send("DELETE", f"/v1/apps/{APP}/releases/1.1.0", h)


async def tampered_query(env: Env) -> RawResponse:
    h = sign(env, "GET", f"/v1/apps/{APP}/journal?limit=1")
    return await env.send("GET", f"/v1/apps/{APP}/journal?limit=10000", h)


async def signed_for_another_agent(env: Env) -> RawResponse:
    h = sign(env, "POST", ACTIVATE, ACTIVATE_STAGED, authority="web-2.example.net:7801")
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def json_body_tampered(env: Env) -> RawResponse:
    signed_body = json.dumps({"version": "1.0.0"}).encode()
    assert len(signed_body) == len(ACTIVATE_STAGED)
    return await env.send(
        "POST", ACTIVATE, sign(env, "POST", ACTIVATE, signed_body), ACTIVATE_STAGED
    )


async def upload_body_tampered(env: Env) -> RawResponse:
    data = env.packages["1.2.0"].read_bytes()
    h = sign(env, "PUT", UPLOAD, data, content_type="application/octet-stream")
    evil = bytearray(data)
    evil[len(evil) // 2] ^= 0xFF
    return await env.send("PUT", UPLOAD, h, bytes(evil))


async def content_digest_not_covered(env: Env) -> RawResponse:
    now = int(time.time())
    h = forge(
        env,
        "GET",
        "/v1/apps",
        params=_params(now, now + 60, env.keys.deploy.keyid),
        components=httpsig.COMPONENTS[:-1],
    )
    return await env.send("GET", "/v1/apps", h)


async def content_type_swapped(env: Env) -> RawResponse:
    h = _replace(
        sign(env, "POST", ACTIVATE, ACTIVATE_STAGED), "Content-Type", lambda _: "text/plain"
    )
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def oversized_declared_length(env: Env) -> RawResponse:
    h = sign(env, "PUT", UPLOAD, b"x", content_type="application/octet-stream")
    return await env.send("PUT", UPLOAD, h, b"", content_length=5 * 1024 * 1024)


async def oversized_chunked_upload(env: Env) -> RawResponse:
    body = b"\0" * (5 * 1024 * 1024)
    h = sign(env, "PUT", UPLOAD, body, content_type="application/octet-stream")
    return await env.send("PUT", UPLOAD, h, body, chunked=True)


async def oversized_json_body(env: Env) -> RawResponse:
    body = json.dumps({"version": "1.1.0", "pad": "x" * 70_000}).encode()
    return await env.send("POST", ACTIVATE, sign(env, "POST", ACTIVATE, body), body)


async def slow_upload_body(env: Env) -> RawResponse:
    body = env.packages["1.2.0"].read_bytes()
    h = sign(env, "PUT", UPLOAD, body, content_type="application/octet-stream")
    return await env.send("PUT", UPLOAD, h, body, trickle_then_stall=True)


async def malformed_signature_input(env: Env) -> RawResponse:
    h = _replace(sign(env, "GET", "/v1/apps"), "Signature-Input", lambda v: v[: len(v) // 2])
    return await env.send("GET", "/v1/apps", h)


async def malformed_signature(env: Env) -> RawResponse:
    h = _replace(sign(env, "GET", "/v1/apps"), "Signature", lambda _: "cutover=:not*base64:")
    return await env.send("GET", "/v1/apps", h)


async def malformed_content_digest(env: Env) -> RawResponse:
    h = _replace(sign(env, "GET", "/v1/apps"), "Content-Digest", lambda _: "sha-256=deadbeef")
    return await env.send("GET", "/v1/apps", h)


async def duplicated_signature_header(env: Env) -> RawResponse:
    h = sign(env, "GET", "/v1/apps")
    h.append(("Signature", dict(h)["Signature"]))
    return await env.send("GET", "/v1/apps", h)


async def unknown_body_field(env: Env) -> RawResponse:
    body = json.dumps({"version": "1.1.0", "force": True}).encode()
    return await env.send("POST", ACTIVATE, sign(env, "POST", ACTIVATE, body), body)


async def unsigned_probe_of_unknown_route(env: Env) -> RawResponse:
    return await env.send("GET", "/v1/admin", [])


async def duplicate_json_key(env: Env) -> RawResponse:
    """The first value is the staged one: a parser keeping the last would re-activate 1.0.0."""
    body = b'{"version": "1.1.0", "version": "1.0.0"}'
    return await env.send("POST", ACTIVATE, sign(env, "POST", ACTIVATE, body), body)


async def coerced_string_bool(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/rollback"
    body = json.dumps({"to": "1.1.0", "restore": "yes"}).encode()
    return await env.send("POST", target, sign(env, "POST", target, body), body)


async def coerced_int_bool(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/rollback"
    body = json.dumps({"to": "1.1.0", "restore": 1}).encode()
    return await env.send("POST", target, sign(env, "POST", target, body), body)


async def repeated_query_parameter(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/journal?limit=1&limit=2"
    return await env.send("GET", target, sign(env, "GET", target))


async def body_on_get(env: Env) -> RawResponse:
    body = b'{"x": 1}'
    return await env.send("GET", "/v1/apps", sign(env, "GET", "/v1/apps", body), body)


async def body_on_delete(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/releases/1.1.0"
    body = b'{"force": true}'
    return await env.send("DELETE", target, sign(env, "DELETE", target, body), body)


async def json_content_type_without_body(env: Env) -> RawResponse:
    target = f"/v1/apps/{APP}/releases/1.1.0"
    h = sign(env, "DELETE", target, content_type="application/json")
    return await env.send("DELETE", target, h)


async def gzip_body_digest_of_decompressed(env: Env) -> RawResponse:
    """RFC 9530: the digest is over the bytes sent; a gzip body is refused before it is read."""
    body = ACTIVATE_STAGED
    h = [*sign(env, "POST", ACTIVATE, body), ("Content-Encoding", "gzip")]
    return await env.send("POST", ACTIVATE, h, gzip.compress(body))


async def gzip_body_digest_of_compressed(env: Env) -> RawResponse:
    packed = gzip.compress(ACTIVATE_STAGED)
    h = sign(env, "POST", ACTIVATE, packed, content_type="application/json")
    return await env.send("POST", ACTIVATE, [*h, ("Content-Encoding", "gzip")], packed)


async def unsigned_gzip_probe(env: Env) -> RawResponse:
    h = [("Content-Type", "application/json"), ("Content-Encoding", "br")]
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


async def unknown_expectation(env: Env) -> RawResponse:
    h = [*sign(env, "POST", ACTIVATE, ACTIVATE_STAGED), ("Expect", "200-ok")]
    return await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)


Case = Callable[[Env], Awaitable[RawResponse]]
CASES = [
    pytest.param(no_signature, 401, "missing_signature", id="no-signature"),
    pytest.param(unknown_keyid, 401, "unknown_key", id="unknown-keyid"),
    pytest.param(wrong_key_for_keyid, 401, "bad_signature", id="wrong-key-for-keyid"),
    pytest.param(release_key_as_controller_key, 401, "unknown_key", id="release-key-as-controller"),
    pytest.param(read_key_attempts_deploy, 401, "forbidden_role", id="read-key-attempts-deploy"),
    pytest.param(alg_confusion, 401, "bad_alg", id="alg-confusion"),
    pytest.param(bit_flipped_signature, 401, "bad_signature", id="bit-flipped-signature"),
    pytest.param(extra_signature_parameter, 401, "bad_params", id="extra-signature-parameter"),
    pytest.param(missing_signature_parameter, 401, "bad_params", id="missing-signature-parameter"),
    pytest.param(exact_replay, 401, "replayed", id="exact-replay"),
    pytest.param(replay_after_agent_restart, 401, "replayed", id="replay-after-agent-restart"),
    pytest.param(reused_nonce_fresh_signature, 401, "replayed", id="reused-nonce-fresh-signature"),
    pytest.param(expired, 401, "expired", id="expired"),
    pytest.param(created_in_the_future, 401, "not_yet_valid", id="created-in-the-future"),
    pytest.param(too_long_lived, 401, "lifetime_too_long", id="lifetime-over-300s"),
    pytest.param(tampered_method, 401, "bad_signature", id="tampered-method"),
    pytest.param(tampered_path, 401, "bad_signature", id="tampered-path"),
    pytest.param(tampered_query, 401, "bad_signature", id="tampered-query"),
    pytest.param(signed_for_another_agent, 401, "bad_signature", id="authority-of-another-agent"),
    pytest.param(json_body_tampered, 401, "digest_mismatch", id="json-body-tampered"),
    pytest.param(upload_body_tampered, 401, "digest_mismatch", id="upload-body-tampered"),
    pytest.param(
        content_digest_not_covered, 401, "bad_components", id="content-digest-not-covered"
    ),
    pytest.param(content_type_swapped, 401, "bad_signature", id="content-type-swapped"),
    pytest.param(
        oversized_declared_length, 413, "payload_too_large", id="oversized-content-length"
    ),
    pytest.param(oversized_chunked_upload, 413, "payload_too_large", id="oversized-chunked-upload"),
    pytest.param(oversized_json_body, 413, "payload_too_large", id="oversized-json-body"),
    pytest.param(slow_upload_body, 408, "body_timeout", id="slow-upload-body"),
    pytest.param(
        malformed_signature_input, 401, "malformed_signature_input", id="malformed-signature-input"
    ),
    pytest.param(malformed_signature, 401, "malformed_signature", id="malformed-signature"),
    pytest.param(malformed_content_digest, 401, "bad_digest_header", id="malformed-content-digest"),
    pytest.param(
        duplicated_signature_header, 401, "malformed_signature", id="duplicated-signature-header"
    ),
    pytest.param(unknown_body_field, 400, "bad_request", id="unknown-body-field"),
    pytest.param(
        unsigned_probe_of_unknown_route, 401, "missing_signature", id="unsigned-unknown-route"
    ),
    pytest.param(duplicate_json_key, 400, "bad_request", id="duplicate-json-key"),
    pytest.param(coerced_string_bool, 400, "bad_request", id="restore-yes-not-coerced"),
    pytest.param(coerced_int_bool, 400, "bad_request", id="restore-1-not-coerced"),
    pytest.param(repeated_query_parameter, 400, "bad_request", id="repeated-query-parameter"),
    pytest.param(body_on_get, 400, "bad_request", id="body-on-get"),
    pytest.param(body_on_delete, 400, "bad_request", id="body-on-delete"),
    pytest.param(
        json_content_type_without_body, 400, "bad_request", id="json-content-type-without-body"
    ),
    pytest.param(
        gzip_body_digest_of_decompressed,
        415,
        "unsupported_media_type",
        id="gzip-digest-of-decompressed",
    ),
    pytest.param(
        gzip_body_digest_of_compressed, 415, "unsupported_media_type", id="gzip-digest-of-gzip"
    ),
    pytest.param(unsigned_gzip_probe, 401, "missing_signature", id="unsigned-gzip"),
    pytest.param(unknown_expectation, 417, "expectation_failed", id="unknown-expectation"),
]


@pytest.mark.parametrize(("case", "status", "code"), CASES)
async def test_hostile_request_is_refused_and_changes_nothing(
    env: Env, case: Case, status: int, code: str
) -> None:
    before = env.agent.snapshot()
    resp = await case(env)
    assert (resp.status, resp.code) == (status, code), resp.body
    assert set(resp.json) <= {"error", "kind", "message"}
    # the kind is the registry's class for that status: what the client raises
    assert REGISTRY[resp.json["kind"]].http_status == status, resp.body
    assert env.agent.snapshot() == before
    assert env.agent.proc is not None and env.agent.proc.poll() is None, env.agent.log_text()


async def test_auth_failures_are_counted_by_reason(env: Env) -> None:
    """/metrics is unauthenticated, exports counters by reason, and no secrets."""
    assert (await bit_flipped_signature(env)).status == 401
    resp = await env.send("GET", "/metrics", [])
    assert resp.status == 200
    text = resp.body.decode()
    assert 'cutover_auth_failures_total{reason="bad_signature"}' in text
    assert 'cutover_app_release_info{app="demo",role="current",version="1.0.0"} 1.0' in text
    for secret in (env.keys.deploy.keyid, str(env.agent.root), "BEGIN"):
        assert secret not in text


async def test_a_401_line_names_the_keyid_the_request_claimed(env: Env) -> None:
    """The signature did not verify, so nothing is known about the caller but its claim: the
    request line carries the claimed keyid (16 hex), for the operator chasing a misconfigured
    controller."""
    seen = len(env.agent.log_events())
    assert (await bit_flipped_signature(env)).status == 401
    h = _replace(
        sign(env, "POST", ACTIVATE, ACTIVATE_STAGED),
        "Signature-Input",
        lambda v: v.replace(env.keys.deploy.keyid, "ab" * 32),
    )
    assert (await env.send("POST", ACTIVATE, h, ACTIVATE_STAGED)).status == 401
    refused = [
        e for e in env.agent.log_events()[seen:] if e["event"] == "request" and e["status"] == 401
    ]
    assert [(e["error"], e["keyid"], e["level"]) for e in refused] == [
        ("bad_signature", env.keys.deploy.keyid[:16], "warning"),
        ("unknown_key", "ab" * 8, "warning"),
    ]


async def test_health_reveals_nothing(env: Env) -> None:
    resp = await env.send("GET", "/v1/health", [])
    assert (resp.status, resp.json) == (200, {"status": "ok"})
