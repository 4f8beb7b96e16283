"""The e2e fixture itself: ``Agent.start`` only reports a start that its own daemon made.

Five suites share this machine and ``free_port()`` cannot reserve a port, so another process may
answer on an agent's port first. Seen in a loaded run: an agent meant to refuse to start (a
world-writable state dir) "started" because someone else's server answered ``/v1/health``, and
its running ``Popen`` later failed an unrelated test with ``ResourceWarning: subprocess ... is
still running``.

And :func:`sigint_as_at_a_terminal`: a test's Ctrl-C reaches the controller also when pytest runs
as a background job (seen in every full ``make test > log &`` run: test_fleet.py's Ctrl-C test
failed, the controller having inherited an ignored SIGINT).

And :func:`free_port`: seen in a loaded flake hunt (test_fleet.py, r6), an agent's start failed
with ``address already in use``: the port had been the kernel's ``bind(0)`` choice, from the
ephemeral range every outgoing connection on the machine draws from.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.e2e.conftest import Agent, Keys, ephemeral_ports, free_port, sigint_as_at_a_terminal
from tests.e2e.fleet_fixture import start_all

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


# what a Python program (the controller) makes of the SIGINT it was started with
_SIGINT_HANDLER = """
import signal
h = signal.getsignal(signal.SIGINT)
print("ctrl-c" if h is signal.default_int_handler else "ignored" if h == signal.SIG_IGN else h)
"""


def _child_sigint() -> str:
    proc = subprocess.run(
        [sys.executable, "-c", _SIGINT_HANDLER], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def test_a_child_started_for_a_ctrl_c_test_handles_sigint_when_pytest_ignores_it() -> None:
    """pytest as a shell's background job: SIGINT ignored here, and so in every child, unless it
    is started in :func:`sigint_as_at_a_terminal`; this process's SIGINT is restored after."""
    outer = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `make test > log &` starts pytest
    try:
        inherited = _child_sigint()
        with sigint_as_at_a_terminal():
            as_at_a_terminal = _child_sigint()
        after = signal.getsignal(signal.SIGINT)
    finally:
        signal.signal(signal.SIGINT, outer)
    assert inherited == "ignored"  # the controller would ignore the test's Ctrl-C
    assert as_at_a_terminal == "ctrl-c"
    assert after is signal.SIG_IGN


def test_free_port_picks_where_the_kernel_hands_no_port_to_anyone_else() -> None:
    """The kernel's own choice (what free_port() returned before) is in the ephemeral range,
    shared with every process's outgoing connections; free_port() picks below it, a port free
    at the pick and never the same twice in a process."""
    ephemeral = ephemeral_ports()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        assert s.getsockname()[1] in ephemeral
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert [p for p in ports if p in ephemeral] == []
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))  # free (nothing of this test took it meanwhile)


def test_a_fleet_start_that_fails_on_one_agent_leaves_no_daemon_running(
    tmp_path: Path, keys: Keys
) -> None:
    """One of three agents refuses to start (a world-writable state dir): start_all raises its
    error, and the two that started are stopped (before: left running after the fixture failed,
    as after the flake hunt's 'address already in use')."""
    agents = [Agent(tmp_path / f"agent{i}", keys) for i in range(3)]
    agents[1].state_dir.mkdir(mode=0o750)
    agents[1].state_dir.chmod(0o777)  # the daemon refuses to start (exit 2)
    with pytest.raises(RuntimeError, match="agent exited with 2"):
        start_all(agents)
    assert [a.proc is not None for a in agents] == [True, True, True]
    assert [a.proc.poll() for a in agents if a.proc is not None] == [0, 2, 0]  # stopped cleanly
