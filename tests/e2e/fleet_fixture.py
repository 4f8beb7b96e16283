"""A fleet of real agents for the controller's end-to-end tests.

:class:`Fleet` starts several :class:`tests.e2e.conftest.Agent` daemons in parallel (each is a
real ``cutover-agent serve`` on 127.0.0.1), writes a ``fleet.toml`` naming them, and runs the real
``cutover`` CLI as a subprocess against it. :class:`WebhookReceiver` is a real HTTP server on
127.0.0.1 that records every POST it gets.
"""

from __future__ import annotations

import http.server
import json
import os
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.e2e.conftest import BIN, Agent, Keys, free_port


def trust_release_key(agent: Agent, name: str) -> None:
    """Make ``agent`` trust release key ``name`` instead of the fleet's (a misconfigured host)."""
    text = agent.config.read_text()
    agent.config.write_text(text.replace(str(agent.keys.pub("release")), str(agent.keys.pub(name))))


def start_all(agents: list[Agent]) -> None:
    """Start the daemons in parallel (each start waits for /v1/health). If one fails, those
    that started are stopped before its error is raised: a module's fleet fixture never reaches
    its teardown then, and its daemons would run on (seen in a flake hunt, r6)."""
    with ThreadPoolExecutor(max_workers=len(agents)) as pool:
        starts = [pool.submit(a.start) for a in agents]
    failed = [e for f in starts if (e := f.exception()) is not None]
    if failed:
        for a in agents:
            if a.proc is not None and a.proc.poll() is None:
                a.stop()
        raise failed[0]


def store_settings(port: int) -> dict[str, Any]:
    """Agent settings that let it fetch from a package store on 127.0.0.1:``port`` (loopback is
    refused unless ``agent.fetch_allow`` names it)."""
    return {"fetch_allow": [f"http://127.0.0.1:{port}/"]}


def dead_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (a free port, not listened on)."""
    return f"http://127.0.0.1:{free_port()}"


@dataclass
class Fleet:
    """Named agents with groups, a fleet.toml, and the cutover CLI."""

    tmp: Path
    keys: Keys
    groups: dict[str, list[str]]
    agents: dict[str, Agent] = field(default_factory=dict)
    store_port: int = field(default_factory=free_port)  # where a test may serve packages

    def __post_init__(self) -> None:
        for name in self.groups:
            self.agents[name] = Agent(self.tmp / name, self.keys, store_settings(self.store_port))
        self.path = self.tmp / "fleet.toml"
        self.write()

    def write(self, webhooks: list[dict[str, Any]] | None = None, extra_hosts: str = "") -> Path:
        lines = [
            'app = "demo"',
            f'controller_key = "{self.keys.dir / "deploy"}"',
            "",
            "[concurrency]",
            "max_parallel = 4",
            "timeout_s = 20",
        ]
        for name, agent in self.agents.items():
            lines += [
                "",
                f"[hosts.{name}]",
                f'url = "{agent.base_url}"',
                f"groups = {json.dumps(self.groups[name])}",
            ]
        for hook in webhooks or []:
            lines += ["", "[[webhooks]]", *(f"{k} = {json.dumps(v)}" for k, v in hook.items())]
        self.path.write_text("\n".join(lines) + "\n" + extra_hosts)
        return self.path

    def start(self) -> None:
        start_all(list(self.agents.values()))

    def stop(self) -> None:
        for a in self.agents.values():
            if a.proc is not None and a.proc.poll() is None:
                a.stop()

    def cutover(
        self, *args: str, fleet: Path | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "CUTOVER_FLEET": str(fleet or self.path), "COLUMNS": "200"}
        env.pop("CUTOVER_KEY", None)
        return subprocess.run(
            [str(BIN / "cutover"), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            check=False,
        )

    def stream(self, *args: str, expect: int, **kw: Any) -> list[dict[str, Any]]:
        """Run a long command with --json; assert its exit code; return its NDJSON events."""
        proc = self.cutover(*args, "--json", **kw)
        assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        events = [json.loads(line) for line in proc.stdout.splitlines()]
        assert events and events[-1]["event"] == "summary", proc.stdout
        assert events[-1]["exit_code"] == expect
        return events

    def document(self, *args: str, expect: int, **kw: Any) -> dict[str, Any]:
        proc = self.cutover(*args, "--json", **kw)
        assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        data: dict[str, Any] = json.loads(proc.stdout)
        return data


def results(events: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """host -> its ``host.result`` of the summary."""
    return {h["host"]: h for h in events[-1]["hosts"]}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # the stdlib's name
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        server: Any = self.server
        server.received.append(
            {
                "path": self.path,
                "content_type": self.headers.get("Content-Type"),
                "body": json.loads(body),
            }
        )
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # the stdlib's name
        return


@dataclass
class WebhookReceiver:
    url: str
    received: list[dict[str, Any]]


@contextmanager
def webhook_receiver() -> Iterator[WebhookReceiver]:
    """A real HTTP server on 127.0.0.1 recording each POSTed JSON body."""
    server: Any = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield WebhookReceiver(
            f"http://127.0.0.1:{server.server_address[1]}/hooks/T0/B0/secret", server.received
        )
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)
