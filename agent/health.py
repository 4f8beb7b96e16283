"""Health checks and the phase policy that gates a release (DESIGN.md, "Health checks").

Four kinds of check, each giving ``pass``, ``fail`` or ``inconclusive`` with a short detail:

``http``
    One request (no redirects, no proxy from the environment, no cookies, a fresh connection),
    ``Host`` header (and TLS server name) overridable; passes on the expected status and, when
    asked, a substring / regex found in the first 1 MiB of the body.
``tcp``
    A TCP connection opens within the timeout.
``command``
    argv run like a hook (clean env, cwd = release dir, own process group killed on timeout);
    exit 0 passes, anything else (including a timeout) fails.
``log``
    No line matching ``pattern`` was appended to ``path`` since a start offset recorded before
    activation (:func:`log_offsets`). Relative paths are resolved against the release dir. A file
    that does not exist passes (nothing was logged); a file smaller than its offset was truncated
    or rotated and is read from its start. At most 16 MiB are scanned per check run; within a phase
    each run continues where the last one stopped. A log failure is final: the line was written.

``inconclusive`` means the check could not be carried out for a reason on *our* side, so it says
nothing about the release: the host name does not resolve, the URL is malformed, we ran out of file
descriptors or ports, a log file cannot be read by the agent, no start offset was recorded, or the
check itself crashed. An unhealthy *target* (refused, timed out, wrong status, no match, non-zero
exit) is always ``fail``.

Phase policy (:func:`run_phase`), for ``checks``, ``interval_s``, ``retries``,
``healthy_deadline_s`` and ``min_healthy_time_s``:

1. No checks: the phase passes at once (0 rounds).
2. A *round* runs every check concurrently; it passes when every check passes. Rounds start
   ``interval_s`` apart (start to start; a slow round delays the next, rounds never overlap), and no
   round starts after ``healthy_deadline_s``; a round still running at the deadline is cancelled
   and its unfinished checks fail.
3. The phase **passes** at the end of a passing round when passing rounds have run continuously
   for ``min_healthy_time_s`` (from the start of the first passing round of the streak to the start
   of this one); with 0, the first passing round is enough.
4. A non-passing round restarts the healthy streak. The phase **fails** as soon as
   ``retries + 1`` consecutive rounds did not pass, immediately when a ``log`` check fails, or
   when the deadline comes before rule 3 was met.
5. A failed phase is reported ``inconclusive`` instead of ``fail`` when the checks that kept the
   last round from passing were all inconclusive (the lifecycle decides what that means).

:func:`run_phase` never raises for an unhealthy release; it returns a :class:`PhaseResult`.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import shlex
import socket
import stat
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp
import structlog

from agent.hooks import _run_process, clean_env
from agent.manifest import CommandCheck, HealthPhase, HttpCheck, LogCheck, TcpCheck, VersionProbe

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LOG_READ_BYTES",
    "AnyCheck",
    "CheckResult",
    "HealthContext",
    "PhaseResult",
    "Status",
    "check_name",
    "command_env",
    "log_offsets",
    "probe_version",
    "run_check",
    "run_phase",
]

log = structlog.get_logger(__name__)

Status = Literal["pass", "fail", "inconclusive"]
AnyCheck = HttpCheck | TcpCheck | CommandCheck | LogCheck

MAX_BODY_BYTES = 1024 * 1024
MAX_LOG_READ_BYTES = 16 * 1024 * 1024
_SNIPPET_CHARS = 200
_COMMAND_KILL_GRACE_S = 2.0
_COMMAND_OUTPUT_CAP_BYTES = 4096
# errno values that mean *this host* is short of a resource, not that the target is unhealthy.
_LOCAL_ERRNOS = frozenset(
    {errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM, errno.EADDRNOTAVAIL}
)
# Executing a command fails for these because of the release (bad argv), anything else is local.
_RELEASE_SPAWN_ERRNOS = frozenset(
    {errno.ENOENT, errno.EACCES, errno.ENOEXEC, errno.ENOTDIR, errno.EISDIR, errno.ELOOP}
)


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check run."""

    name: str
    kind: str
    status: Status
    detail: str
    duration_s: float

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "kind": self.kind,
            "status": self.status,
            "detail": self.detail,
            "duration_s": round(self.duration_s, 3),
        }


@dataclass(frozen=True)
class PhaseResult:
    """The outcome of a health phase: ``last`` holds the last round's results."""

    phase: str
    status: Status
    rounds: int
    duration_s: float
    last: list[CheckResult]
    detail: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "phase": self.phase,
            "status": self.status,
            "rounds": self.rounds,
            "duration_s": round(self.duration_s, 3),
            "detail": self.detail,
            "last": [r.to_json() for r in self.last],
        }


@dataclass(frozen=True)
class HealthContext:
    """What checks run against.

    Attributes:
        release_dir: cwd of command checks, base of relative log paths.
        version: the version a :class:`VersionProbe` must find.
        log_offsets: start offsets from :func:`log_offsets`, keyed by the declared ``LogCheck.path``.
        env: extra environment for command checks, on top of :func:`agent.hooks.clean_env`.
    """

    release_dir: Path
    version: str
    log_offsets: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


class _UnavailableError(Exception):
    """Internal: a check ended early with this status and detail."""

    def __init__(self, status: Status, detail: str) -> None:
        super().__init__(detail)
        self.status: Status = status
        self.detail = detail


def check_name(check: AnyCheck) -> str:
    """The check's declared name, or one derived from what it checks."""
    if check.name:
        return check.name
    if isinstance(check, HttpCheck):
        return f"http {check.method} {check.url}"
    if isinstance(check, TcpCheck):
        return f"tcp {check.host}:{check.port}"
    if isinstance(check, CommandCheck):
        return _clip(f"command {shlex.join(check.argv)}", 100)
    return _clip(f"log {check.path} !~ /{check.pattern}/", 100)


def _clip(text: str, limit: int = _SNIPPET_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _snippet(body: str) -> str:
    return repr(_clip(body.strip()))


def _resolve(path: str, release_dir: Path) -> Path:
    p = Path(path)
    return p if p.is_absolute() else release_dir / p


def _file_size(path: Path) -> int:
    try:
        st = os.stat(path)
    except OSError:
        return 0
    return st.st_size if stat.S_ISREG(st.st_mode) else 0


def log_offsets(checks: Iterable[AnyCheck], release_dir: Path) -> dict[str, int]:
    """Record where each log check starts reading: the file's current size (0 if missing).

    Call it just before the flip (or the start of the checks) and pass the result as
    :attr:`HealthContext.log_offsets`. It only ``stat``\\s files, so it is cheap enough to call from
    the event loop.

    Args:
        checks: any checks; only ``log`` checks are looked at.
        release_dir: base of relative log paths.

    Returns:
        ``{declared path: size in bytes}``.
    """
    return {
        c.path: _file_size(_resolve(c.path, release_dir)) for c in checks if isinstance(c, LogCheck)
    }


# --- http ---------------------------------------------------------------------------------------


def _new_session() -> aiohttp.ClientSession:
    # A fresh connection per request (no keep-alive to an old worker), no cookies carried between
    # rounds, and no HTTP(S)_PROXY from the agent's environment in front of localhost.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


@dataclass(frozen=True)
class _Reply:
    status: int
    body: str
    truncated: bool


async def _read_capped(stream: aiohttp.StreamReader, cap: int) -> tuple[bytes, bool]:
    data = bytearray()
    while len(data) < cap:
        chunk = await stream.read(cap - len(data))
        if not chunk:
            return bytes(data), False
        data += chunk
    return bytes(data), not stream.at_eof()


def _connect_error(exc: OSError, target: str) -> _UnavailableError:
    if isinstance(exc, socket.gaierror):
        return _UnavailableError("inconclusive", f"cannot resolve {target}: {exc.strerror or exc}")
    if exc.errno in _LOCAL_ERRNOS:
        return _UnavailableError(
            "inconclusive", f"local error connecting to {target}: {exc.strerror}"
        )
    return _UnavailableError("fail", f"cannot connect to {target}: {exc.strerror or exc}")


async def _http_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    host: str | None,
    timeout_s: float,
    body_cap: int,
) -> _Reply:
    headers = {"Host": host} if host else {}
    server_hostname = host if host and url.startswith("https:") else None
    try:
        async with session.request(
            method,
            url,
            headers=headers,
            allow_redirects=False,
            timeout=aiohttp.ClientTimeout(total=timeout_s),
            server_hostname=server_hostname,
        ) as resp:
            raw, truncated = (b"", False)
            if method != "HEAD" and body_cap > 0:
                raw, truncated = await _read_capped(resp.content, body_cap)
            try:
                text = raw.decode(resp.charset or "utf-8", errors="replace")
            except LookupError:
                text = raw.decode("utf-8", errors="replace")
            return _Reply(resp.status, text, truncated)
    except TimeoutError as exc:
        raise _UnavailableError("fail", f"no complete response within {timeout_s:g}s") from exc
    except (aiohttp.InvalidURL, ValueError) as exc:
        # ValueError: e.g. a host name IDNA cannot encode (a label over 63 characters).
        raise _UnavailableError("inconclusive", f"invalid URL {url!r}: {exc}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise _connect_error(exc.os_error, f"{exc.host}:{exc.port}") from exc
    except aiohttp.ClientError as exc:
        raise _UnavailableError("fail", f"request failed: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise _connect_error(exc, url) from exc


async def _http_check(check: HttpCheck, session: aiohttp.ClientSession) -> tuple[Status, str]:
    wants_body = check.body_contains is not None or check.body_regex is not None
    reply = await _http_request(
        session,
        check.method,
        check.url,
        check.host,
        check.timeout_s,
        MAX_BODY_BYTES if wants_body else _SNIPPET_CHARS,
    )
    if reply.status != check.expect_status:
        return "fail", (
            f"expected status {check.expect_status}, got {reply.status}; "
            f"body {_snippet(reply.body)}"
        )
    where = "the first 1 MiB of the body" if reply.truncated else "the body"
    if check.body_contains is not None and check.body_contains not in reply.body:
        return "fail", (
            f"{check.body_contains!r} not found in {where}; body {_snippet(reply.body)}"
        )
    if check.body_regex is not None:
        # A pathological regex must not stall the event loop; it runs in a worker thread.
        match = await asyncio.to_thread(re.compile(check.body_regex).search, reply.body)
        if match is None:
            return "fail", (
                f"/{check.body_regex}/ does not match {where}; body {_snippet(reply.body)}"
            )
    return "pass", f"status {reply.status}"


# --- tcp, command ---------------------------------------------------------------------------


async def _tcp_check(check: TcpCheck) -> tuple[Status, str]:
    target = f"{check.host}:{check.port}"
    try:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(check.host, check.port), check.timeout_s
        )
    except TimeoutError:
        return "fail", f"no connection to {target} within {check.timeout_s:g}s"
    except OSError as exc:
        err = _connect_error(exc, target)
        return err.status, err.detail
    except ValueError as exc:  # a host name IDNA cannot encode
        return "inconclusive", f"invalid host {check.host!r}: {exc}"
    writer.close()
    with contextlib.suppress(OSError):  # the peer may reset a connection we no longer need
        await writer.wait_closed()
    return "pass", f"connected to {target}"


def command_env(ctx: HealthContext) -> dict[str, str]:
    """The environment of a command check: hook rules, ``ctx.env``, version and release dir."""
    env = clean_env(home=ctx.release_dir, extra=ctx.env)
    env["CUTOVER_VERSION"] = ctx.version
    env["CUTOVER_RELEASE_DIR"] = str(ctx.release_dir)
    return env


async def _command_check(check: CommandCheck, ctx: HealthContext) -> tuple[Status, str]:
    outcome = await _run_process(
        check.argv,
        cwd=ctx.release_dir,
        env=command_env(ctx),
        timeout_s=check.timeout_s,
        kill_grace_s=_COMMAND_KILL_GRACE_S,
        output_cap_bytes=_COMMAND_OUTPUT_CAP_BYTES,
    )
    if outcome.spawn_error is not None:
        exc = outcome.spawn_error
        status: Status = "fail" if exc.errno in _RELEASE_SPAWN_ERRNOS else "inconclusive"
        return status, f"cannot execute {check.argv[0]!r}: {exc.strerror or exc}"
    lines = outcome.output_tail.strip().splitlines()
    said = f"; output {_snippet(lines[-1])}" if lines else ""
    if outcome.timed_out:
        return "fail", f"timed out after {check.timeout_s:g}s and was killed{said}"
    if outcome.signal is not None:
        return "fail", f"killed by signal {outcome.signal}{said}"
    if outcome.exit_code != 0:
        return "fail", f"exit code {outcome.exit_code}{said}"
    return "pass", "exit code 0"


# --- log ------------------------------------------------------------------------------------


def _read_range(fd: int, start: int, length: int) -> bytes:
    parts: list[bytes] = []
    while length > 0:
        chunk = os.pread(fd, length, start)
        if not chunk:
            break
        parts.append(chunk)
        start += len(chunk)
        length -= len(chunk)
    return b"".join(parts)


def _scan_log(path: Path, offset: int, pattern: str) -> tuple[Status, str, int]:
    """Blocking: search ``path`` from ``offset``. Returns status, detail and the next offset."""
    try:
        # O_NONBLOCK: a FIFO planted at the path must not hang the worker thread in open().
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        return "pass", f"{path} does not exist (nothing logged)", 0
    except OSError as exc:
        return "inconclusive", f"cannot open {path}: {exc.strerror}", offset
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return "inconclusive", f"{path} is not a regular file", offset
        rotated = st.st_size < offset
        start = 0 if rotated else offset
        data = _read_range(fd, start, min(st.st_size - start, MAX_LOG_READ_BYTES))
    except OSError as exc:
        return "inconclusive", f"cannot read {path}: {exc.strerror}", offset
    finally:
        os.close(fd)
    text = data.decode("utf-8", errors="replace")
    match = re.compile(pattern, re.MULTILINE).search(text)
    if match is not None:
        begin = text.rfind("\n", 0, match.start()) + 1
        end = text.find("\n", match.start())
        line = text[begin : end if end >= 0 else len(text)]
        return "fail", f"{path}: {_snippet(line)} matches /{pattern}/", offset
    # Continue after the last complete line; a line still being written is read again next time
    # (unless a single line fills the whole read window, then it is skipped).
    newline = data.rfind(b"\n")
    if newline >= 0:
        next_offset = start + newline + 1
    else:
        next_offset = start + len(data) if len(data) >= MAX_LOG_READ_BYTES else start
    note = " (file was truncated or rotated; read from its start)" if rotated else ""
    left = st.st_size - start - len(data)
    more = f", {left} more bytes to scan" if left > 0 else ""
    return "pass", f"no match in {len(data)} new bytes{more}{note}", next_offset


async def _log_check(
    check: LogCheck, ctx: HealthContext, offset: int | None
) -> tuple[Status, str, int]:
    path = _resolve(check.path, ctx.release_dir)
    if offset is None:
        return (
            "inconclusive",
            (
                f"no start offset recorded for {check.path!r}; record one with log_offsets() before "
                "activation"
            ),
            0,
        )
    return await asyncio.to_thread(_scan_log, path, offset, check.pattern)


# --- one check, one round, one phase --------------------------------------------------------


async def _run(
    check: AnyCheck,
    ctx: HealthContext,
    session: aiohttp.ClientSession | None,
    cursors: dict[int, int] | None,
    index: int,
) -> CheckResult:
    started = time.monotonic()
    name = check_name(check)
    status: Status
    try:
        if isinstance(check, HttpCheck):
            if session is None:
                async with _new_session() as own:
                    status, detail = await _http_check(check, own)
            else:
                status, detail = await _http_check(check, session)
        elif isinstance(check, TcpCheck):
            status, detail = await _tcp_check(check)
        elif isinstance(check, CommandCheck):
            status, detail = await _command_check(check, ctx)
        else:
            offset = cursors.get(index) if cursors is not None else ctx.log_offsets.get(check.path)
            status, detail, next_offset = await _log_check(check, ctx, offset)
            if cursors is not None:
                cursors[index] = next_offset
    except _UnavailableError as exc:
        status, detail = exc.status, exc.detail
    except Exception as exc:
        # A bug in a check says nothing about the release; report it, do not crash the phase.
        log.exception("health.check_crashed", check=name)
        status, detail = "inconclusive", f"check crashed: {type(exc).__name__}: {exc}"
    return CheckResult(name, check.type, status, detail, time.monotonic() - started)


async def run_check(check: AnyCheck, ctx: HealthContext) -> CheckResult:
    """Run one check once (a ``log`` check reads from ``ctx.log_offsets[check.path]``).

    Args:
        check: the declaration from the manifest.
        ctx: release dir, version, log offsets, env.

    Returns:
        The result; never raises for an unhealthy target.
    """
    return await _run(check, ctx, None, None, 0)


def _emit(on_event: Callable[[CheckResult], None] | None, result: CheckResult) -> None:
    if on_event is None:
        return
    try:
        on_event(result)
    except Exception:
        log.exception("health.event_callback_failed", check=result.name)


async def _round(
    checks: Sequence[AnyCheck],
    ctx: HealthContext,
    session: aiohttp.ClientSession | None,
    cursors: dict[int, int],
    remaining_s: float,
    on_event: Callable[[CheckResult], None] | None,
) -> list[CheckResult]:
    async def one(index: int, check: AnyCheck) -> CheckResult:
        started = time.monotonic()
        try:
            result = await asyncio.wait_for(_run(check, ctx, session, cursors, index), remaining_s)
        except TimeoutError:
            result = CheckResult(
                check_name(check),
                check.type,
                "fail",
                "still running at the phase's healthy deadline; cancelled",
                time.monotonic() - started,
            )
        _emit(on_event, result)
        return result

    return list(await asyncio.gather(*(one(i, c) for i, c in enumerate(checks))))


def _summary(results: Sequence[CheckResult]) -> str:
    bad = [r for r in results if r.status != "pass"]
    return "; ".join(f"{r.name}: {r.status}: {r.detail}" for r in bad[:3]) + (
        f" (+{len(bad) - 3} more)" if len(bad) > 3 else ""
    )


def _failed_status(results: Sequence[CheckResult]) -> Status:
    return "fail" if any(r.status == "fail" for r in results) else "inconclusive"


async def run_phase(
    phase_name: str,
    phase: HealthPhase,
    ctx: HealthContext,
    on_event: Callable[[CheckResult], None] | None = None,
) -> PhaseResult:
    """Run a health phase under the policy in the module docstring.

    Args:
        phase_name: ``staged`` or ``live`` (any label; it is only reported).
        phase: checks and policy from the manifest.
        ctx: release dir, version, log offsets (a log check without one starts at the file's size
            when the phase starts), env for command checks.
        on_event: called with every check result as it completes; exceptions it raises are logged.

    Returns:
        The :class:`PhaseResult`; a failed phase is a result, never an exception.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    checks: list[AnyCheck] = list(phase.checks)
    if not checks:
        log.info("health.phase_finished", phase=phase_name, status="pass", rounds=0)
        return PhaseResult(phase_name, "pass", 0, 0.0, [], "no checks declared")
    missing = [c for c in checks if isinstance(c, LogCheck) and c.path not in ctx.log_offsets]
    defaults = await asyncio.to_thread(log_offsets, missing, ctx.release_dir) if missing else {}
    cursors = {
        i: ctx.log_offsets.get(c.path, defaults.get(c.path, 0))
        for i, c in enumerate(checks)
        if isinstance(c, LogCheck)
    }
    deadline = started + phase.healthy_deadline_s
    log.info("health.phase_started", phase=phase_name, checks=len(checks))

    rounds = 0
    failing_rounds = 0
    healthy_since: float | None = None
    last: list[CheckResult] = []
    status: Status = "fail"
    detail = ""
    session = _new_session() if any(isinstance(c, HttpCheck) for c in checks) else None
    try:
        while True:
            round_start = loop.time()
            last = await _round(checks, ctx, session, cursors, deadline - round_start, on_event)
            rounds += 1
            log_failures = [
                r
                for r, c in zip(last, checks, strict=True)
                if r.status == "fail" and isinstance(c, LogCheck)
            ]
            if log_failures:
                detail = f"log check failed (final): {_summary(log_failures)}"
                break
            if all(r.status == "pass" for r in last):
                failing_rounds = 0
                if healthy_since is None:
                    healthy_since = round_start
                if round_start - healthy_since >= phase.min_healthy_time_s:
                    status = "pass"
                    detail = f"healthy after {rounds} round(s)"
                    if phase.min_healthy_time_s:
                        detail += f", continuously for {round_start - healthy_since:.1f}s"
                    break
            else:
                healthy_since = None
                failing_rounds += 1
                if failing_rounds > phase.retries:
                    status = _failed_status(last)
                    detail = (
                        f"{failing_rounds} consecutive round(s) not healthy "
                        f"(retries={phase.retries}): {_summary(last)}"
                    )
                    break
            next_start = round_start + phase.interval_s
            if next_start >= deadline:
                if healthy_since is not None:
                    detail = (
                        f"healthy for only {round_start - healthy_since:.1f}s of the required "
                        f"{phase.min_healthy_time_s:g}s before the {phase.healthy_deadline_s:g}s "
                        "deadline"
                    )
                else:
                    status = _failed_status(last)
                    detail = (
                        f"not healthy within the {phase.healthy_deadline_s:g}s deadline: "
                        f"{_summary(last)}"
                    )
                break
            await asyncio.sleep(max(0.0, next_start - loop.time()))
    finally:
        if session is not None:
            await session.close()
    duration = loop.time() - started
    log.info(
        "health.phase_finished",
        phase=phase_name,
        status=status,
        rounds=rounds,
        duration_s=round(duration, 3),
        detail=detail,
    )
    return PhaseResult(phase_name, status, rounds, duration, last, detail)


# --- version probe --------------------------------------------------------------------------


def _version_pattern(version: str) -> re.Pattern[str]:
    # The version as a whole token: "1.2" must not be found in "1.20", "11.2" or "1.2-rc1".
    return re.compile(r"(?<![0-9.])" + re.escape(version) + r"(?![0-9A-Za-z._+-])")


async def probe_version(
    probe: VersionProbe, ctx: HealthContext, *, interval_s: float = 1.0
) -> CheckResult:
    """Poll ``probe.url`` until a 2xx body shows ``ctx.version`` (as a whole token) or time is up.

    Args:
        probe: URL, Host override, per-request timeout, overall deadline.
        ctx: ``version`` is what must appear.
        interval_s: time between the starts of two attempts.

    Returns:
        ``pass`` once seen; otherwise ``fail`` (or ``inconclusive`` when the last attempt could not
        be made, e.g. the host does not resolve) with what the last attempt saw.
    """
    loop = asyncio.get_running_loop()
    started = loop.time()
    deadline = started + probe.deadline_s
    wanted = _version_pattern(ctx.version)
    name = f"version {probe.url}"
    attempts = 0
    status: Status = "fail"
    seen = "nothing"
    async with _new_session() as session:
        while True:
            attempt_start = loop.time()
            attempts += 1
            timeout = max(0.001, min(probe.timeout_s, deadline - attempt_start))
            try:
                reply = await _http_request(
                    session, "GET", probe.url, probe.host, timeout, MAX_BODY_BYTES
                )
            except _UnavailableError as exc:
                status, seen = exc.status, exc.detail
            else:
                if 200 <= reply.status < 300 and wanted.search(reply.body):
                    detail = f"serves {ctx.version} (attempt {attempts})"
                    log.info("health.version_confirmed", url=probe.url, version=ctx.version)
                    return CheckResult(name, "version", "pass", detail, loop.time() - started)
                status, seen = "fail", f"status {reply.status}, body {_snippet(reply.body)}"
            next_start = attempt_start + interval_s
            if next_start >= deadline:
                break
            await asyncio.sleep(max(0.0, next_start - loop.time()))
    detail = (
        f"{probe.url} did not report version {ctx.version!r} within {probe.deadline_s:g}s "
        f"({attempts} attempts); last saw {seen}"
    )
    log.warning("health.version_not_confirmed", url=probe.url, version=ctx.version, seen=seen)
    return CheckResult(name, "version", status, detail, loop.time() - started)
