"""End-to-end fixtures: a REAL ``cutover-agent serve`` subprocess on 127.0.0.1.

Each :class:`Agent` owns a temp config, an app root (``demo``), a state dir and a free port. It
starts ``.venv/bin/cutover-agent --config X serve``, waits for ``/v1/health``, and stops with
SIGTERM (SIGKILL after a deadline). Keys are real Ed25519 files; packages are built and signed by
the real builder. :func:`send_raw` speaks HTTP/1.1 over a plain socket so tests can send what no
well-behaved client would (duplicate headers, trickled bodies, lying Content-Length).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import resource
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cutover.agent.api_models import Accepted, OperationRecord
from cutover.agent.host.layout import Layout
from cutover.agent.keys import PrivateKey, generate_keypair
from cutover.controller.build import build_package, sign_package
from cutover.controller.client import AgentClient, signed_headers

BIN = Path(sys.executable).parent
AGENT = BIN / "cutover-agent"
APP = "demo"
VERSIONS = ("1.0.0", "1.1.0", "1.2.0")
SLOW_VERSION = "2.0.0"  # its post_activate hook waits for $CUTOVER_SHARED_DIR/hook-release

# touch a marker, then wait (bounded) until the test creates the release file
SLOW_HOOK = (
    'touch "$CUTOVER_SHARED_DIR/hook-started"; i=0; '
    'while [ ! -e "$CUTOVER_SHARED_DIR/hook-release" ] && [ $i -lt 600 ]; '
    "do sleep 0.05; i=$((i+1)); done"
)


@dataclass(frozen=True)
class Keys:
    deploy: PrivateKey
    read: PrivateKey
    release: PrivateKey
    stranger: PrivateKey
    other_deploy: PrivateKey  # a second deploy key, removed by the live-reload test
    dir: Path

    def pub(self, name: str) -> Path:
        return self.dir / f"{name}.pub"


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    d = tmp_path_factory.mktemp("keys")
    made = {n: generate_keypair(d / n) for n in ("deploy", "read", "release", "stranger", "other")}
    return Keys(made["deploy"], made["read"], made["release"], made["stranger"], made["other"], d)


def signed_package(
    tmp: Path,
    key: PrivateKey,
    version: str,
    files: Mapping[str, str | bytes],
    *,
    toml: str = "",
    tag: str = "",
) -> Path:
    """Build and sign ``tmp/demo[-tag]-VERSION.cutover`` from ``files`` (relative path: text or
    bytes) and a ``cutover.toml`` naming the app, with ``toml`` appended."""
    name = f"{APP}-{tag}-{version}" if tag else f"{APP}-{version}"
    src = tmp / f"src-{name}"
    src.mkdir(parents=True)
    for rel, content in files.items():
        path = src / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    (src / "cutover.toml").write_text(f'app = "{APP}"\n{toml}')
    out = tmp / f"{name}.cutover"
    build_package(src, out, version=version)
    sign_package(out, key)
    return out


def wait_until(predicate: Callable[[], object], what: str, timeout_s: float = 60.0) -> None:
    """Poll until ``predicate()`` holds (a bounded wait for an event, not a timing claim)."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > end:
            raise AssertionError(f"never happened within {timeout_s:.0f} s: {what}")
        time.sleep(0.05)


def pause_at(point: str, marker: Path) -> dict[str, str]:
    """The agent's environment for its stage workers to pause at the fault point ``point``
    (``marker`` appears when one does)."""
    return {"CUTOVER_TEST_PAUSE_AT": point, "CUTOVER_TEST_PAUSE_FILE": str(marker)}


def stage_worker_pids(agent: Agent) -> list[int]:
    """The stage workers ``agent`` logged starting, oldest first."""
    return [int(e["pid"]) for e in agent.log_events() if e.get("event") == "stage_worker"]


def _build(tmp: Path, version: str, key: PrivateKey, toml: str = "") -> Path:
    files = {
        "index.html": f"<h1>{APP} {version}</h1>\n",
        "VERSION": f"{version}\n",
        "lib/app.php": f"<?php return '{version}';\n" * 50,
    }
    return signed_package(tmp, key, version, files, toml=toml)


@pytest.fixture(scope="session")
def packages(tmp_path_factory: pytest.TempPathFactory, keys: Keys) -> dict[str, Path]:
    """Signed packages of ``demo``: 1.0.0, 1.1.0, 1.2.0 and the slow 2.0.0."""
    tmp = tmp_path_factory.mktemp("packages")
    out = {v: _build(tmp, v, keys.release) for v in VERSIONS}
    slow = (
        "[[hooks.post_activate]]\n"
        'name = "wait-for-test"\n'
        f'argv = ["sh", "-c", {json.dumps(SLOW_HOOK)}]\n'
        "timeout_s = 60\n"
    )
    out[SLOW_VERSION] = _build(tmp, SLOW_VERSION, keys.release, slow)
    return out


_UNVERIFIED = ssl.create_default_context()
_UNVERIFIED.check_hostname = False
_UNVERIFIED.verify_mode = ssl.CERT_NONE  # readiness probe only; tests pin the certificate


# Ports free_port() picks from: below the kernel's ephemeral range (ip_local_port_range), so no
# process's outgoing connection or bind(0) is handed one between the pick and the agent's bind.
# The first port, and the size the range needs to be worth it (else: the kernel's bind(0)).
_PICK_FROM, _PICK_MIN_SPAN = 20000, 2000
_picked: set[int] = set()
_random = random.SystemRandom()  # never seeded alike in two test processes


def ephemeral_ports() -> range:
    """The ports the kernel hands to a ``bind(0)`` or an outgoing connection (Linux)."""
    try:
        lo, hi = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    except (OSError, ValueError):
        return range(32768, 61000)  # Linux's default
    return range(lo, hi + 1)


def free_port() -> int:
    """A port on 127.0.0.1, free now, for a server a test starts later (an agent, nginx).

    It cannot be reserved, so it is picked where nobody else is handed one by the kernel: a
    kernel-chosen port (``bind(0)``) is in the ephemeral range, which every outgoing connection
    of every process on this shared machine also draws from; seen in a loaded run, an agent's
    start failed with ``address already in use`` on such a port. Random below that range (other
    test runs pick alike rarely), and never one this process picked before.
    """
    first = ephemeral_ports().start
    if first - _PICK_FROM >= _PICK_MIN_SPAN:
        for _ in range(1000):
            port = _random.randrange(_PICK_FROM, first)
            if port in _picked:
                continue
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue  # taken
            _picked.add(port)
            return port
    with socket.socket() as s:  # no room below the ephemeral range: the kernel's choice
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def sigint_as_at_a_terminal() -> Iterator[None]:
    """Processes started in the block get SIGINT at its default disposition, as a command typed
    at a terminal does, however this test process was started.

    A non-interactive shell starts a background job (``make test > log 2>&1 &``) with SIGINT
    (and SIGQUIT) ignored; an ignored signal stays ignored across fork and exec, and Python then leaves
    it so (``asyncio.run`` installs its Ctrl-C handler only over the default one): a test that
    sends SIGINT to such a child would see it ignored. A handled signal is reset to its default
    at exec, so a child started while this process handles SIGINT starts as from a terminal.
    """
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Agent:
    """One agent daemon (subprocess) with its own config, app root and state."""

    tmp: Path
    keys: Keys
    settings: dict[str, Any] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    def __post_init__(self) -> None:
        self.root = self.tmp / "srv" / APP
        self.state_dir = self.tmp / "state"
        self.config = self.tmp / "etc" / "agent.toml"
        self.log = self.tmp / "agent.log"
        for d in Layout(self.root).dirs():
            d.mkdir(parents=True, exist_ok=True)
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.write_config()

    @property
    def name(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        scheme = "https" if "tls_cert" in self.settings else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def write_config(self, controller_keys: tuple[str, ...] = ("deploy", "read", "other")) -> None:
        """(Re)write the config atomically, trusting the named controller keys."""
        agent = {
            "name": self.name,
            "listen": self.name,
            "state_dir": str(self.state_dir),
            "max_upload_bytes": 4 * 1024 * 1024,
            "upload_idle_timeout_s": 1.0,
            "upload_timeout_s": 30.0,
            "drain_timeout_s": 2.0,
            "log_format": "json",
            **{k: v for k, v in self.settings.items() if k != "app_toml"},
        }
        roles = {"deploy": "deploy", "read": "read", "other": "deploy"}
        lines = ["[agent]"]
        lines += [f"{k} = {json.dumps(v)}" for k, v in agent.items()]
        for name in controller_keys:
            lines += [
                "",
                "[[controller_keys]]",
                f'name = "{name}"',
                f'path = "{self.keys.pub(name)}"',
                f'role = "{roles[name]}"',
            ]
        lines += [
            "",
            f"[apps.{APP}]",
            f'root = "{self.root}"',
            f'release_keys = ["{self.keys.pub("release")}"]',
            str(self.settings.get("app_toml", "")),  # extra lines of the app's section
        ]
        tmp = self.config.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n")
        tmp.replace(self.config)  # like an editor or config management: rename over

    # ------------------------------------------------------------------ process
    def start(
        self,
        env: dict[str, str] | None = None,
        timeout_s: float = 120.0,
        nofile: int | None = None,
    ) -> None:
        """Start the daemon; ``nofile`` sets its RLIMIT_NOFILE (like the unit's LimitNOFILE).

        ``timeout_s`` is a deadline, not an expectation: it returns as soon as /v1/health answers,
        and a loaded CI machine may need far longer than the usual second.
        """
        assert self.proc is None or self.proc.poll() is not None, "already running"
        logf = self.log.open("ab")

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        self.proc = subprocess.Popen(
            [str(AGENT), "--config", str(self.config), "serve"],
            stdout=logf,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=limit if nofile is not None else None,  # before exec only
        )
        logf.close()
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"agent exited with {self.proc.returncode}:\n{self.log_text()}")
            try:
                with urllib.request.urlopen(  # noqa: S310  # our own URL on 127.0.0.1
                    f"{self.base_url}/v1/health", timeout=1, context=_UNVERIFIED
                ) as resp:
                    if resp.status == 200 and self._listening():
                        return
            except OSError:
                pass
            time.sleep(0.05)
        # Never leave a half-started daemon behind (agents made outside the fixtures are not
        # stopped at teardown; a running Popen collected later is a ResourceWarning).
        self.proc.kill()
        self.proc.wait()
        raise RuntimeError(f"agent did not become healthy:\n{self.log_text()}")

    def _listening(self) -> bool:
        """Our process logged ``listening``: the port is ours. Without this a 200 could come from
        another agent that took the free port first (5 suites share this machine), and a daemon
        that was meant to refuse to start would seem to have started."""
        assert self.proc is not None
        pid = self.proc.pid
        return any(e.get("event") == "listening" and e.get("pid") == pid for e in self.log_events())

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 120.0) -> int:
        """Signal the agent and wait; returns its exit code (SIGKILL after ``timeout_s``)."""
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    def restart(self) -> None:
        assert self.stop() == 0, self.log_text()
        self.start()

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def log_events(self) -> list[dict[str, Any]]:
        out = []
        for line in self.log_text().splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def client(self, key: PrivateKey | None = None, **kw: Any) -> AgentClient:
        return AgentClient(self.base_url, key or self.keys.deploy, **kw)

    # ------------------------------------------------------------------ disk
    @property
    def meta(self) -> Path:
        return self.root / ".cutover"

    def current(self) -> str | None:
        link = self.root / "current"
        return os.readlink(link) if link.is_symlink() else None

    def journal(self) -> list[dict[str, Any]]:
        path = self.meta / "journal.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def upload_headers(
        self, path: str, body: bytes, query: str = "", key: PrivateKey | None = None
    ) -> dict[str, str]:
        """The signed headers of a raw ``PUT`` of ``body`` (a package, or a resume's tail) to
        ``path`` (and ``query``), by ``key`` (default: the deploy key)."""
        return signed_headers(
            key or self.keys.deploy,
            "PUT",
            self.name,
            path,
            query,
            content_type="application/octet-stream",
            body_sha256=hashlib.sha256(body).digest(),
        )

    def snapshot(self) -> dict[str, Any]:
        """Everything a rejected request must leave untouched."""
        state = self.meta / "state.json"
        uploads = self.state_dir / "uploads"
        return {
            "state": state.read_bytes() if state.exists() else b"",
            "current": self.current(),
            "releases": sorted(p.name for p in (self.root / "releases").iterdir()),
            "journal_lines": len(self.journal()),
            "incoming": sorted(p.name for p in (self.meta / "incoming").iterdir()),
            "uploads": sorted(p.name for p in uploads.iterdir()) if uploads.exists() else [],
        }


@pytest.fixture
def agent(tmp_path: Path, keys: Keys) -> Iterator[Agent]:
    """A started agent for one test; stopped (and checked to exit 0) afterwards."""
    a = Agent(tmp_path, keys)
    a.start()
    yield a
    if a.proc is not None and a.proc.poll() is None:
        a.stop()


@pytest.fixture
def make_agent(tmp_path: Path, keys: Keys) -> Iterator[Any]:
    """Factory for agents with custom settings (not started)."""
    made: list[Agent] = []

    def factory(**settings: Any) -> Agent:
        a = Agent(tmp_path / f"agent{len(made)}", keys, settings)
        made.append(a)
        return a

    yield factory
    for a in made:
        if a.proc is not None and a.proc.poll() is None:
            a.stop()


async def run_op(client: AgentClient, accepted: Accepted) -> OperationRecord:
    """Wait for the operation a ``202`` started; return its final record."""
    return await client.wait(accepted.operation)


# ---------------------------------------------------------------------- raw HTTP
@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def json(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body) if self.body else {}
        return data

    @property
    def code(self) -> str | None:
        try:
            return self.json.get("error")
        except ValueError:
            return None


async def send_raw(
    port: int,
    method: str,
    target: str,
    headers: list[tuple[str, str]],
    body: bytes = b"",
    *,
    content_length: int | None = None,
    chunked: bool = False,
    trickle_then_stall: bool = False,
    timeout_s: float = 60.0,
) -> RawResponse:
    """Send one HTTP/1.1 request byte by byte as given and read the response.

    Args:
        headers: sent in order, duplicates kept (Host and Connection are added).
        content_length: the declared length (default ``len(body)``; ignored when chunked).
        chunked: send ``Transfer-Encoding: chunked`` in 64 KiB chunks.
        trickle_then_stall: send only the first 10 body bytes, then nothing.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {target} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in headers]
        if chunked:
            lines.append("Transfer-Encoding: chunked")
        else:
            lines.append(
                f"Content-Length: {len(body) if content_length is None else content_length}"
            )
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))

        async def send_body() -> None:
            try:
                if trickle_then_stall:
                    writer.write(body[:10])
                elif chunked:
                    for i in range(0, len(body), 65536):
                        piece = body[i : i + 65536]
                        writer.write(b"%x\r\n" % len(piece) + piece + b"\r\n")
                        await writer.drain()
                    writer.write(b"0\r\n\r\n")
                else:
                    writer.write(body)
                await writer.drain()
            except ConnectionError:
                pass  # the server refused early and closed: its response is what counts

        sender = asyncio.create_task(send_body())
        async with asyncio.timeout(timeout_s):
            head = await reader.readuntil(b"\r\n\r\n")
            status_line, *header_lines = head.decode("latin-1").split("\r\n")
            status = int(status_line.split()[1])
            rheaders = {}
            for h in header_lines:
                if ":" in h:
                    k, v = h.split(":", 1)
                    rheaders[k.strip().lower()] = v.strip()
            if "content-length" in rheaders:
                data = await reader.readexactly(int(rheaders["content-length"]))
            else:
                data = await reader.read()
        sender.cancel()
        return RawResponse(status, rheaders, data)
    finally:
        writer.close()
