"""The e2e fixture itself: ``Agent.start`` only reports a start that its own daemon made.

Five suites share this machine and ``free_port()`` cannot reserve a port, so another process may
answer on an agent's port first. Seen in a loaded run: an agent meant to refuse to start (a
world-writable state dir) "started" because someone else's server answered ``/v1/health``, and
its running ``Popen`` later failed an unrelated test with ``ResourceWarning: subprocess ... is
still running``.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Agent, Keys

pytestmark = pytest.mark.e2e


class _Healthy(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"{}")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def squatter() -> Iterator[int]:
    """Another process's server on a port, answering 200 to everything."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Healthy)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join()


def test_a_200_from_another_server_on_the_port_is_not_a_start(
    tmp_path: Path, keys: Keys, squatter: int
) -> None:
    agent = Agent(tmp_path / "agent", keys, port=squatter)
    agent.state_dir.mkdir(mode=0o750)
    agent.state_dir.chmod(0o777)  # the daemon refuses to start (exit 2) before it listens
    with pytest.raises(RuntimeError, match="agent exited with 2"):
        agent.start()
    assert agent.proc is not None and agent.proc.returncode == 2
    assert "state_dir" in agent.log_text()
