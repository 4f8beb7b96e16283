"""The four kinds of health check, each run once (docs/lifecycle.md, "Health checks").

Each gives ``pass``, ``fail`` or ``inconclusive`` with a short detail; the policy that repeats them
over a phase is :func:`agent.health.run_phase`.

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

Every read is bounded (:data:`MAX_BODY_BYTES`, :data:`MAX_LOG_READ_BYTES`); regexes and file reads
run in a worker thread; a log path must be a regular file, opened non-blocking so a planted FIFO
cannot hang us; commands run under :mod:`agent._process`. No check raises for an unhealthy target.
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
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import aiohttp

from cutover.agent._util.lazylog import get_logger
from cutover.agent.actions._process import clean_env, run_process
from cutover.agent.package.manifest import CommandCheck, HttpCheck, LogCheck, TcpCheck

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_LOG_READ_BYTES",
    "AnyCheck",
    "CheckResult",
    "HealthContext",
    "Reply",
    "Status",
    "UnavailableError",
    "check_name",
    "command_env",
    "connect_error",
    "http_request",
    "log_offsets",
    "new_session",
    "run_check",
    "run_one",
    "snippet",
]

log = get_logger(__name__)

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
class HealthContext:
    """What checks run against.

    Attributes:
        release_dir: cwd of command checks, base of relative log paths.
        version: the version a :class:`VersionProbe` must find.
        log_offsets: start offsets from :func:`log_offsets`, keyed by the declared ``LogCheck.path``.
        env: extra environment for command checks, on top of :func:`agent._process.clean_env`.
    """

    release_dir: Path
    version: str
    log_offsets: Mapping[str, int] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)


class UnavailableError(Exception):
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


def snippet(body: str) -> str:
    """``body`` stripped, clipped to a short excerpt and quoted, for a check's detail."""
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


def new_session() -> aiohttp.ClientSession:
    """The HTTP client session of http checks and version probes; close it when done."""
    # A fresh connection per request (no keep-alive to an old worker), no cookies carried between
    # rounds, and no HTTP(S)_PROXY from the agent's environment in front of localhost.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(force_close=True),
        cookie_jar=aiohttp.DummyCookieJar(),
        trust_env=False,
    )


@dataclass(frozen=True)
class Reply:
    """What :func:`http_request` read: the status and the (capped) body as text."""

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


def connect_error(exc: OSError, target: str) -> UnavailableError:
    """Classify a failed connect: our side (resolution, local resources) is inconclusive."""
    if isinstance(exc, socket.gaierror):
        return UnavailableError("inconclusive", f"cannot resolve {target}: {exc.strerror or exc}")
    if exc.errno in _LOCAL_ERRNOS:
        return UnavailableError(
            "inconclusive", f"local error connecting to {target}: {exc.strerror}"
        )
    return UnavailableError("fail", f"cannot connect to {target}: {exc.strerror or exc}")


async def http_request(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    host: str | None,
    timeout_s: float,
    body_cap: int,
) -> Reply:
    """One request under the http-check rules; ``host`` sets ``Host`` and the TLS server name.

    ``timeout_s`` covers the whole exchange; at most ``body_cap`` body bytes are read.

    Raises:
        UnavailableError: no response; ``status`` says whether that is the target's fault.
    """
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
            return Reply(resp.status, text, truncated)
    except TimeoutError as exc:
        raise UnavailableError("fail", f"no complete response within {timeout_s:g}s") from exc
    except (aiohttp.InvalidURL, ValueError) as exc:
        # ValueError: e.g. a host name IDNA cannot encode (a label over 63 characters).
        raise UnavailableError("inconclusive", f"invalid URL {url!r}: {exc}") from exc
    except aiohttp.ClientConnectorError as exc:
        raise connect_error(exc.os_error, f"{exc.host}:{exc.port}") from exc
    except aiohttp.ClientError as exc:
        raise UnavailableError("fail", f"request failed: {type(exc).__name__}: {exc}") from exc
    except OSError as exc:
        raise connect_error(exc, url) from exc


async def _http_check(check: HttpCheck, session: aiohttp.ClientSession) -> tuple[Status, str]:
    wants_body = check.body_contains is not None or check.body_regex is not None
    reply = await http_request(
        session,
        check.method,
        check.url,
        check.host,
        check.timeout_s,
        MAX_BODY_BYTES if wants_body else _SNIPPET_CHARS,
    )
    if reply.status != check.expect_status:
        return "fail", (
            f"expected status {check.expect_status}, got {reply.status}; body {snippet(reply.body)}"
        )
    where = "the first 1 MiB of the body" if reply.truncated else "the body"
    if check.body_contains is not None and check.body_contains not in reply.body:
        return "fail", f"{check.body_contains!r} not found in {where}; body {snippet(reply.body)}"
    if check.body_regex is not None:
        # A pathological regex must not stall the event loop; it runs in a worker thread.
        match = await asyncio.to_thread(re.compile(check.body_regex).search, reply.body)
        if match is None:
            return "fail", (
                f"/{check.body_regex}/ does not match {where}; body {snippet(reply.body)}"
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
        err = connect_error(exc, target)
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
    outcome = await run_process(
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
    said = f"; output {snippet(lines[-1])}" if lines else ""
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
        return "fail", f"{path}: {snippet(line)} matches /{pattern}/", offset
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


# --- one check ------------------------------------------------------------------------------


async def run_one(
    check: AnyCheck,
    ctx: HealthContext,
    session: aiohttp.ClientSession | None,
    cursors: dict[int, int] | None,
    index: int,
) -> CheckResult:
    """Run one check once; never raises for an unhealthy target or a crashed check.

    Args:
        check: the declaration from the manifest.
        ctx: release dir, version, log offsets, env.
        session: reused by an http check; None opens (and closes) one for this run.
        cursors: log read positions by check index, read and advanced here (a phase's state);
            None reads from ``ctx.log_offsets[check.path]`` and records nothing.
        index: the check's index in ``cursors``.
    """
    started = time.monotonic()
    name = check_name(check)
    status: Status
    try:
        if isinstance(check, HttpCheck):
            if session is None:
                async with new_session() as own:
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
    except UnavailableError as exc:
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
    return await run_one(check, ctx, None, None, 0)
