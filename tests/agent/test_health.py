"""agent.health: real aiohttp servers on 127.0.0.1, real sockets, real subprocesses and files."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from cutover.agent.actions.health import (
    CheckResult,
    HealthContext,
    PhaseResult,
    _connect_error,
    check_name,
    log_offsets,
    probe_version,
    run_check,
    run_phase,
)
from cutover.agent.package.manifest import (
    CommandCheck,
    HealthPhase,
    HttpCheck,
    LogCheck,
    TcpCheck,
    VersionProbe,
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
Serve = Callable[[Handler], Awaitable[str]]


@pytest.fixture
async def serve() -> AsyncIterator[Serve]:
    """``await serve(handler)`` starts a real server on 127.0.0.1:0 and returns its base URL."""
    servers: list[TestServer] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        return str(server.make_url("")).rstrip("/")

    yield start
    for server in servers:
        await server.close()


@pytest.fixture
def gate() -> asyncio.Event:
    """Handlers that must hang wait on this; it is never set during the test."""
    return asyncio.Event()


@pytest.fixture
def release(tmp_path: Path) -> Path:
    d = tmp_path / "releases" / "2.0.0"
    d.mkdir(parents=True)
    return d


@pytest.fixture
def ctx(release: Path) -> HealthContext:
    return HealthContext(release_dir=release, version="2.0.0")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _script(*responses: tuple[int, str]) -> Handler:
    """A handler answering with ``responses`` in turn, repeating the last one forever."""
    calls = 0

    async def handler(request: web.Request) -> web.Response:
        nonlocal calls
        status, body = responses[min(calls, len(responses) - 1)]
        calls += 1
        return web.Response(status=status, text=body)

    return handler


OK = (200, "ok")
DOWN = (500, "down")


def http(url: str, **kw: object) -> HttpCheck:
    return HttpCheck.model_validate({"type": "http", "url": url, **kw})


def phase(*checks: object, **policy: float) -> HealthPhase:
    return HealthPhase.model_validate({"checks": list(checks), **policy})


# --- http -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("response", "options", "status", "detail"),
    [
        pytest.param((200, "ok"), {}, "pass", "status 200", id="status-ok"),
        pytest.param(
            (503, "maintenance"), {}, "fail", "expected status 200, got 503", id="status-bad"
        ),
        pytest.param((503, "x"), {"expect_status": 503}, "pass", "status 503", id="expected-503"),
        pytest.param((302, ""), {}, "fail", "got 302", id="redirect-not-followed"),
        pytest.param((200, "db: ok"), {"body_contains": "db: ok"}, "pass", "", id="contains"),
        pytest.param(
            (200, "db: down"),
            {"body_contains": "db: ok"},
            "fail",
            "'db: ok' not found",
            id="contains-missing",
        ),
        pytest.param((200, '{"v": 12}'), {"body_regex": r'"v": \d+'}, "pass", "", id="regex"),
        pytest.param(
            (200, '{"v": "x"}'),
            {"body_regex": r'"v": \d+'},
            "fail",
            "does not match",
            id="regex-missing",
        ),
        pytest.param((200, "ok"), {"method": "HEAD"}, "pass", "", id="head"),
    ],
)
async def test_http_check(
    serve: Serve,
    ctx: HealthContext,
    response: tuple[int, str],
    options: dict[str, object],
    status: str,
    detail: str,
) -> None:
    base = await serve(_script(response))
    result = await run_check(http(f"{base}/health", **options), ctx)
    assert (result.status, result.kind) == (status, "http"), result.detail
    assert detail in result.detail


async def test_http_body_match_sees_only_the_first_mib(serve: Serve, ctx: HealthContext) -> None:
    base = await serve(_script((200, "a" * (1024 * 1024) + "MARKER")))
    result = await run_check(http(base, body_contains="MARKER"), ctx)
    assert result.status == "fail"
    assert "first 1 MiB" in result.detail


async def test_http_host_header_is_honoured(serve: Serve, ctx: HealthContext) -> None:
    async def vhost(request: web.Request) -> web.Response:
        return web.Response(status=200 if request.host == "app.example" else 421)

    base = await serve(vhost)
    assert (await run_check(http(base, host="app.example"), ctx)).status == "pass"
    assert (await run_check(http(base), ctx)).status == "fail"


async def test_http_timeout_fails(serve: Serve, ctx: HealthContext, gate: asyncio.Event) -> None:
    async def hang(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response()

    base = await serve(hang)
    result = await run_check(http(base, timeout_s=0.2), ctx)
    assert result.status == "fail"
    assert "no complete response within 0.2s" in result.detail
    gate.set()


async def test_http_connection_refused_fails(ctx: HealthContext) -> None:
    result = await run_check(http(f"http://127.0.0.1:{_closed_port()}/"), ctx)
    assert result.status == "fail"
    assert "cannot connect to 127.0.0.1" in result.detail


async def test_http_invalid_url_is_inconclusive(ctx: HealthContext) -> None:
    result = await run_check(http("http://127.0.0.1:99999/"), ctx)
    assert result.status == "inconclusive"
    assert "invalid URL" in result.detail


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        pytest.param(
            socket.gaierror(socket.EAI_NONAME, "Name or service not known"),
            "inconclusive",
            id="dns",
        ),
        pytest.param(OSError(errno.EMFILE, "Too many open files"), "inconclusive", id="emfile"),
        pytest.param(OSError(errno.EADDRNOTAVAIL, "no ports"), "inconclusive", id="no-ports"),
        pytest.param(ConnectionRefusedError(errno.ECONNREFUSED, "refused"), "fail", id="refused"),
        pytest.param(OSError(errno.EHOSTUNREACH, "No route to host"), "fail", id="unreachable"),
    ],
)
def test_connect_errors_on_our_side_are_inconclusive(exc: OSError, status: str) -> None:
    assert _connect_error(exc, "app:80").status == status


# --- tcp, command ---------------------------------------------------------------------------


async def test_tcp_check(ctx: HealthContext) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        ok = await run_check(TcpCheck(type="tcp", host="127.0.0.1", port=port), ctx)
        assert (ok.status, ok.name) == ("pass", f"tcp 127.0.0.1:{port}")
    finally:
        server.close()
        await server.wait_closed()
    closed = await run_check(TcpCheck(type="tcp", host="127.0.0.1", port=_closed_port()), ctx)
    assert closed.status == "fail"
    assert "cannot connect" in closed.detail


@pytest.mark.parametrize(
    ("argv", "status", "detail", "timeout_s"),
    [
        # A deadline for a loaded machine where the command must finish; 0.3 s where it must not.
        pytest.param(["true"], "pass", "exit code 0", 60, id="exit-0"),
        pytest.param(
            ["sh", "-c", "echo db unreachable; exit 2"],
            "fail",
            "exit code 2; output 'db unreachable'",
            60,
            id="exit-2",
        ),
        pytest.param(
            ["sh", "-c", "sleep 1000 & sleep 1000"],
            "fail",
            "timed out after 0.3s",
            0.3,
            id="timeout",
        ),
        pytest.param(
            ["bin/missing-check"], "fail", "cannot execute 'bin/missing-check'", 60, id="missing"
        ),
    ],
)
async def test_command_check(
    ctx: HealthContext, argv: list[str], status: str, detail: str, timeout_s: float
) -> None:
    check = CommandCheck(type="command", argv=argv, timeout_s=timeout_s)
    result = await run_check(check, ctx)
    assert result.status == status
    assert detail in result.detail


async def test_command_check_runs_with_a_clean_env_in_the_release(
    ctx: HealthContext, release: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SECRET_TOKEN", "hunter2")
    ctx = HealthContext(release_dir=release, version="2.0.0", env={"CUTOVER_APP": "demo"})
    script = (
        'test -z "$SECRET_TOKEN" && test "$CUTOVER_VERSION" = 2.0.0 && '
        'test "$CUTOVER_APP" = demo && test "$(pwd -P)" = "$(cd "$CUTOVER_RELEASE_DIR" && pwd -P)"'
    )
    result = await run_check(CommandCheck(type="command", argv=["sh", "-c", script]), ctx)
    assert result.status == "pass", result.detail


# --- log ------------------------------------------------------------------------------------


def _log(release: Path, text: str, mode: str = "a") -> Path:
    path = release / "storage" / "logs" / "app.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode) as fh:
        fh.write(text)
    return path


LOGCHECK = LogCheck(type="log", path="storage/logs/app.log", pattern=r"^ERROR\b")


async def test_log_line_before_the_offset_passes_after_it_fails(release: Path) -> None:
    _log(release, "INFO boot\nERROR from the old release\n")
    offsets = log_offsets([LOGCHECK, http("http://x/")], release)
    assert offsets == {"storage/logs/app.log": len("INFO boot\nERROR from the old release\n")}
    ctx = HealthContext(release_dir=release, version="2.0.0", log_offsets=offsets)

    assert (await run_check(LOGCHECK, ctx)).status == "pass"
    _log(release, "INFO request\nERROR boom in the new release\n")
    result = await run_check(LOGCHECK, ctx)
    assert result.status == "fail"
    assert "'ERROR boom in the new release' matches" in result.detail


@pytest.mark.parametrize(
    ("after", "status"),
    [
        pytest.param("ERROR right after rotation\n", "fail", id="rotated-with-error"),
        pytest.param("INFO fresh file\n", "pass", id="rotated-clean"),
    ],
)
async def test_log_rotation_is_read_from_the_start(release: Path, after: str, status: str) -> None:
    path = _log(release, "INFO " + "x" * 1000 + "\n")
    ctx = HealthContext(
        release_dir=release, version="2", log_offsets=log_offsets([LOGCHECK], release)
    )
    path.rename(path.with_name("app.log.1"))
    _log(release, after)
    result = await run_check(LOGCHECK, ctx)
    assert result.status == status
    assert status == "fail" or "rotated" in result.detail


async def test_missing_log_file_passes_and_a_new_one_is_read_from_zero(release: Path) -> None:
    offsets = log_offsets([LOGCHECK], release)
    assert offsets == {"storage/logs/app.log": 0}
    ctx = HealthContext(release_dir=release, version="2", log_offsets=offsets)
    missing = await run_check(LOGCHECK, ctx)
    assert missing.status == "pass"
    assert "does not exist" in missing.detail
    _log(release, "ERROR first line ever\n")
    assert (await run_check(LOGCHECK, ctx)).status == "fail"


async def test_log_check_without_offset_or_on_a_directory_is_inconclusive(
    release: Path, tmp_path: Path
) -> None:
    _log(release, "INFO\n")
    no_offset = await run_check(LOGCHECK, HealthContext(release_dir=release, version="2"))
    assert no_offset.status == "inconclusive"
    assert "log_offsets()" in no_offset.detail

    directory = LogCheck(type="log", path=str(tmp_path), pattern="x")
    ctx = HealthContext(release_dir=release, version="2", log_offsets={str(tmp_path): 0})
    result = await run_check(directory, ctx)
    assert result.status == "inconclusive"
    assert "not a regular file" in result.detail


# --- phase policy ---------------------------------------------------------------------------


async def test_empty_phase_passes_at_once(ctx: HealthContext) -> None:
    result = await run_phase("staged", HealthPhase(), ctx)
    assert (result.status, result.rounds, result.last) == ("pass", 0, [])


async def test_min_healthy_time_is_honoured(serve: Serve, ctx: HealthContext) -> None:
    """Healthy for 3 requests, then broken: the phase never reaches min_healthy_time and fails."""
    base = await serve(_script(OK, OK, OK, DOWN))
    policy = phase(
        {"type": "http", "url": base},
        interval_s=0.05,
        retries=1,
        min_healthy_time_s=30,
        healthy_deadline_s=60,
    )
    result = await run_phase("live", policy, ctx)
    assert result.status == "fail"
    assert result.rounds == 5  # 3 passing, then retries + 1 = 2 failing rounds
    assert "2 consecutive round(s) not healthy (retries=1)" in result.detail
    assert "got 500" in result.detail


async def test_phase_passes_after_continuous_health(serve: Serve, ctx: HealthContext) -> None:
    base = await serve(_script(OK))
    policy = phase(
        {"type": "http", "url": base},
        interval_s=0.05,
        min_healthy_time_s=0.3,
        healthy_deadline_s=10,
    )
    events: list[CheckResult] = []
    result = await run_phase("live", policy, ctx, on_event=events.append)
    assert result.status == "pass", result.detail
    assert result.rounds >= 2  # a streak needs a first round and one >= 0.3 s later
    assert result.duration_s >= 0.3
    assert len(events) == result.rounds
    assert all(e.status == "pass" for e in events)


@pytest.mark.parametrize(
    ("retries", "status", "rounds"),
    [pytest.param(2, "pass", 3, id="enough-retries"), pytest.param(1, "fail", 2, id="too-few")],
)
async def test_retries_tolerate_consecutive_failing_rounds(
    serve: Serve, ctx: HealthContext, retries: int, status: str, rounds: int
) -> None:
    base = await serve(_script(DOWN, DOWN, OK))
    policy = phase({"type": "http", "url": base}, interval_s=0.02, retries=retries)
    result = await run_phase("live", policy, ctx)
    assert (result.status, result.rounds) == (status, rounds)


async def test_failure_resets_the_healthy_clock(serve: Serve, ctx: HealthContext) -> None:
    """Flapping never accumulates min_healthy_time: the deadline ends the phase."""
    base = await serve(_script(OK, DOWN, OK, DOWN, OK, DOWN, OK, DOWN, OK, DOWN, OK, DOWN, OK))
    policy = phase(
        {"type": "http", "url": base},
        interval_s=0.05,
        retries=100,
        min_healthy_time_s=0.2,
        healthy_deadline_s=0.5,
    )
    result = await run_phase("live", policy, ctx)
    assert result.status == "fail"
    assert "deadline" in result.detail


async def test_deadline_ends_the_phase(serve: Serve, ctx: HealthContext) -> None:
    base = await serve(_script(DOWN))
    policy = phase(
        {"type": "http", "url": base}, interval_s=0.1, retries=1000, healthy_deadline_s=0.4
    )
    result = await run_phase("live", policy, ctx)
    assert result.status == "fail"
    assert "not healthy within the 0.4s deadline" in result.detail
    assert 1 <= result.rounds <= 4  # no round starts after the deadline


async def test_deadline_cancels_a_round_in_flight(
    serve: Serve, ctx: HealthContext, gate: asyncio.Event
) -> None:
    async def hang(request: web.Request) -> web.Response:
        await gate.wait()
        return web.Response()

    base = await serve(hang)
    policy = phase({"type": "http", "url": base, "timeout_s": 60}, healthy_deadline_s=0.3)
    result = await run_phase("live", policy, ctx)
    gate.set()
    assert (result.status, result.rounds) == ("fail", 1)
    assert "still running at the phase's healthy deadline" in result.last[0].detail


async def test_a_log_failure_fails_the_phase_immediately(serve: Serve, release: Path) -> None:
    base = await serve(_script(OK))
    _log(release, "INFO old\n")
    offsets = log_offsets([LOGCHECK], release)
    _log(release, "ERROR crashed on boot\n")
    ctx = HealthContext(release_dir=release, version="2", log_offsets=offsets)
    policy = phase(
        {"type": "http", "url": base},
        LOGCHECK.model_dump(),
        interval_s=0.05,
        retries=100,
        min_healthy_time_s=5,
        healthy_deadline_s=10,
    )
    result = await run_phase("live", policy, ctx)
    assert (result.status, result.rounds) == ("fail", 1)
    assert result.detail.startswith("log check failed (final)")
    assert [r.status for r in result.last] == ["pass", "fail"]


async def test_log_check_in_a_phase_continues_where_it_stopped(release: Path) -> None:
    """Without recorded offsets the phase starts at the files' sizes: older errors do not count."""
    _log(release, "ERROR long before this phase\n")
    ctx = HealthContext(release_dir=release, version="2")
    policy = phase(LOGCHECK.model_dump(), interval_s=0.02, min_healthy_time_s=0.1)
    result = await run_phase("staged", policy, ctx)
    assert result.status == "pass", result.detail


async def test_only_inconclusive_checks_make_an_inconclusive_phase(
    release: Path, tmp_path: Path
) -> None:
    ctx = HealthContext(release_dir=release, version="2", log_offsets={str(tmp_path): 0})
    policy = phase(
        {"type": "log", "path": str(tmp_path), "pattern": "x"}, interval_s=0.02, retries=1
    )
    result = await run_phase("live", policy, ctx)
    assert (result.status, result.rounds) == ("inconclusive", 2)


def test_check_names() -> None:
    assert (
        check_name(http("http://127.0.0.1:8080/health")) == "http GET http://127.0.0.1:8080/health"
    )
    assert check_name(http("http://x/", name="front")) == "front"
    assert (
        check_name(CommandCheck(type="command", argv=["bin/check", "a b"]))
        == "command bin/check 'a b'"
    )
    assert check_name(LOGCHECK) == r"log storage/logs/app.log !~ /^ERROR\b/"


def test_phase_result_to_json() -> None:
    check = CheckResult("c", "tcp", "fail", "refused", 0.0104)
    result = PhaseResult("live", "fail", 3, 1.23456, [check], "why")
    assert result.to_json() == {
        "phase": "live",
        "status": "fail",
        "rounds": 3,
        "duration_s": 1.235,
        "detail": "why",
        "last": [
            {"name": "c", "kind": "tcp", "status": "fail", "detail": "refused", "duration_s": 0.01}
        ],
    }


# --- version probe --------------------------------------------------------------------------


async def test_version_probe_passes_once_the_new_version_is_served(
    serve: Serve, ctx: HealthContext
) -> None:
    base = await serve(
        _script(
            (200, '{"version": "1.9.0"}'),
            (200, '{"version": "1.9.0"}'),
            (200, '{"version": "2.0.0"}'),
        )
    )
    probe = VersionProbe(url=f"{base}/version", deadline_s=10)
    result = await probe_version(probe, ctx, interval_s=0.02)
    assert result.status == "pass"
    assert "attempt 3" in result.detail


@pytest.mark.parametrize(
    "body",
    [
        pytest.param('{"version": "1.9.0"}', id="old"),
        pytest.param('{"version": "2.0.0-rc1"}', id="prefix-is-not-enough"),
        pytest.param('{"version": "12.0.0"}', id="suffix-is-not-enough"),
    ],
)
async def test_version_probe_fails_with_what_it_saw(
    serve: Serve, ctx: HealthContext, body: str
) -> None:
    base = await serve(_script((200, body)))
    probe = VersionProbe(url=f"{base}/version", deadline_s=0.2)
    result = await probe_version(probe, ctx, interval_s=0.05)
    assert result.status == "fail"
    assert "did not report version '2.0.0' within 0.2s" in result.detail
    assert body in result.detail


async def test_version_probe_honours_host_and_needs_a_2xx(serve: Serve, ctx: HealthContext) -> None:
    async def vhost(request: web.Request) -> web.Response:
        ok = request.host == "app.example"
        return web.Response(status=200 if ok else 404, text="2.0.0")

    base = await serve(vhost)
    with_host = VersionProbe(url=base, host="app.example", deadline_s=60)  # passes at once
    assert (await probe_version(with_host, ctx, interval_s=0.05)).status == "pass"
    without = await probe_version(VersionProbe(url=base, deadline_s=0.1), ctx, interval_s=0.05)
    assert without.status == "fail"
    assert "status 404" in without.detail
