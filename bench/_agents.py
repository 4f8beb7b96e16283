"""One ``cutover-agent serve`` process for the benchmarks (bench/fleet.py, bench/api.py).

Each agent gets its own directory: an app root laid out like a host's, a state dir, an
``agent.toml`` and a JSON log (``agent.log``). It listens on a port of 127.0.0.1 never handed
out before in this run (100 agents on one machine: two asking the kernel at once can be given
the same free port). Ready means the health check answers *and* this process logged
``listening``: the machine is shared, and a 200 from another engineer's agent on a reused port
would otherwise receive our requests.

``CUTOVER_AGENT_BIN`` runs another agent executable (e.g. an installed one).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cutover.agent.host.layout import Layout  # noqa: E402

AGENT = Path(os.environ.get("CUTOVER_AGENT_BIN", Path(sys.executable).parent / "cutover-agent"))

_TAKEN: set[int] = set()


def free_port() -> int:
    """A free port of 127.0.0.1, never one handed out before in this run."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _TAKEN:
            _TAKEN.add(port)
            return port


class Agent:
    """A started agent serving one app; ``wait_ready`` before sending it requests."""

    def __init__(
        self,
        base: Path,
        app: str,
        *,
        deploy_pub: Path,
        release_pub: Path,
        agent_settings: str = "",
    ) -> None:
        """``agent_settings``: extra ``key = value`` lines of the ``[agent]`` table."""
        base.mkdir(parents=True)
        self.base = base
        self.app = app
        self.port = free_port()
        self.root = base / "srv" / app
        for d in Layout(self.root).dirs():
            d.mkdir(parents=True, exist_ok=True)
        self.config = base / "agent.toml"
        self.config.write_text(
            "[agent]\n"
            f'name = "127.0.0.1:{self.port}"\nlisten = "127.0.0.1:{self.port}"\n'
            f'state_dir = "{base / "state"}"\nlog_format = "json"\n'
            f"{agent_settings}\n"
            f'[[controller_keys]]\nname = "bench"\npath = "{deploy_pub}"\n\n'
            f'[apps.{app}]\nroot = "{self.root}"\nrelease_keys = ["{release_pub}"]\n'
        )
        self.log_path = base / "agent.log"
        self.log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [str(AGENT), "--config", str(self.config), "serve"],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout_s: float) -> None:
        """Until this agent answers its health check and logged ``listening``."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(f"{self.url}/v1/health", timeout=1):  # noqa: S310  # loopback
                    if self._listening():
                        return
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"agent did not start; see {self.log_path}")
            time.sleep(0.05)

    def _listening(self) -> bool:
        for line in self.log_path.read_text(errors="replace").splitlines():
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if e.get("event") == "listening" and e.get("pid") == self.proc.pid:
                return True
        return False

    def status(self, field: str) -> float:
        """A /proc/PID/status field in MiB (VmRSS, VmHWM)."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise KeyError(field)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()
