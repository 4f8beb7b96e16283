"""Pure parts of the connection guard (the behaviour is proven end to end in
tests/e2e/test_connection_limits.py)."""

from __future__ import annotations

import resource

import pytest

from cutover.agent.daemon.connections import FD_RESERVE, effective_max_connections, peer_key


@pytest.mark.parametrize(
    ("peername", "key"),
    [
        pytest.param(("127.0.0.2", 5000), "127.0.0.2", id="ipv4"),
        pytest.param(("2001:db8:1:2:aaaa::1", 5000, 0, 0), "2001:db8:1:2::/64", id="ipv6-by-64"),
        pytest.param(("2001:db8:1:2:bbbb::9", 1, 0, 0), "2001:db8:1:2::/64", id="same-64"),
        pytest.param(("::ffff:10.0.0.1", 5000, 0, 0), "10.0.0.1", id="v4-mapped"),
        pytest.param(None, "?", id="unknown"),
    ],
)
def test_peer_key(peername: object, key: str) -> None:
    assert peer_key(peername) == key


def test_cap_stays_below_the_file_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    assert effective_max_connections(10**9) == max(16, soft - FD_RESERVE)
    assert effective_max_connections(16) == 16
