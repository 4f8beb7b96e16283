"""The fetch policy as a table of cases (pure: no network). The e2e counterpart with real stores
is tests/e2e/test_fetch_policy.py."""

from __future__ import annotations

import ipaddress

import pytest
from yarl import URL

from cutover.agent.daemon.fetch_policy import FetchPolicy, blocked_address
from cutover.agent.errors import RequestError

ALLOW = ["https://artifacts.example.net/releases", "http://127.0.0.1:8080/"]


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        pytest.param("https://artifacts.example.net/releases/a.cutover", True, id="under-prefix"),
        pytest.param("https://artifacts.example.net/releases", True, id="the-prefix-itself"),
        pytest.param("https://ARTIFACTS.example.net/releases/a", True, id="host-case-insensitive"),
        pytest.param("https://artifacts.example.net:443/releases/a", True, id="default-port"),
        pytest.param("https://artifacts.example.net/releases-old/a", False, id="path-boundary"),
        pytest.param("https://artifacts.example.net/other/a", False, id="other-path"),
        pytest.param("https://artifacts.example.net/releases/../admin", False, id="dot-segments"),
        pytest.param("http://artifacts.example.net/releases/a", False, id="other-scheme"),
        pytest.param("https://artifacts.example.net:8443/releases/a", False, id="other-port"),
        pytest.param("https://artifacts.example.net.evil.com/releases/a", False, id="host-suffix"),
        pytest.param("http://127.0.0.1:8080/anything", True, id="loopback-listed-literally"),
        pytest.param("http://127.0.0.1:9090/", False, id="loopback-other-port"),
        pytest.param("http://169.254.169.254/latest/meta-data/", False, id="metadata"),
    ],
)
def test_allowlist(url: str, allowed: bool) -> None:
    policy = FetchPolicy(ALLOW)
    if allowed:
        policy.check_url(URL(url))
    else:
        with pytest.raises(RequestError) as refused:
            policy.check_url(URL(url))
        assert refused.value.code == "fetch_refused"


@pytest.mark.parametrize(
    ("url", "allowed"),
    [
        pytest.param("https://artifacts.example.net/a", True, id="public-name"),
        pytest.param("http://10.1.2.3/a", True, id="private-address"),
        pytest.param("http://127.0.0.1/a", False, id="loopback"),
        pytest.param("http://127.9.9.9/a", False, id="loopback-net"),
        pytest.param("http://[::1]/a", False, id="loopback-v6"),
        pytest.param("http://[::ffff:127.0.0.1]/a", False, id="v4-mapped-loopback"),
        pytest.param("http://169.254.169.254/a", False, id="metadata"),
        pytest.param("http://169.254.10.10/a", False, id="link-local"),
        pytest.param("http://[fe80::1]/a", False, id="link-local-v6"),
        pytest.param("http://[fd00:ec2::254]/a", False, id="aws-metadata-v6"),
        pytest.param("http://100.100.100.200/a", False, id="alibaba-metadata"),
        pytest.param("http://0.0.0.0/a", False, id="unspecified"),
        pytest.param("ftp://artifacts.example.net/a", False, id="not-http"),
    ],
)
def test_refused_addresses_without_allowlist(url: str, allowed: bool) -> None:
    policy = FetchPolicy([])
    if allowed:
        policy.check_url(URL(url))
    else:
        with pytest.raises(RequestError):
            policy.check_url(URL(url))


def test_resolved_address_of_a_listed_host_is_allowed_of_another_refused() -> None:
    policy = FetchPolicy(["http://localhost:8080/"])
    loopback = ipaddress.ip_address("127.0.0.1")
    policy.check_address("localhost", loopback)
    with pytest.raises(RequestError, match="loopback"):
        policy.check_address("store.example.net", loopback)


def test_proxy_host_is_exempt() -> None:
    policy = FetchPolicy([], proxy_hosts=["127.0.0.1"])
    policy.check_address("127.0.0.1", ipaddress.ip_address("127.0.0.1"))
    assert blocked_address(ipaddress.ip_address("127.0.0.1")) == "a loopback address"
