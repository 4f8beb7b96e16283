"""Where the agent may fetch packages from (``POST .../fetch``): ``agent.fetch_allow`` and the
addresses refused without it (docs/security-model.md, "Fetch by URL").

A deploy key can make the agent issue HTTP requests; without limits that reaches cloud metadata
services (``169.254.169.254``) and admin ports on loopback. Rules, applied to the URL of the
request **and again to every redirect target** (redirects are followed by hand, at most
:data:`MAX_REDIRECTS`):

* the URL is absolute ``http``/``https`` with a host;
* with ``fetch_allow`` (URL prefixes such as ``https://artifacts.example.net/releases/``), the URL
  must be under one of them: same scheme, host and port, and a path equal to the prefix's or
  below it (a prefix ``/releases`` covers ``/releases/x`` but not ``/releases-old``);
* loopback, link-local, unspecified and multicast addresses and known cloud metadata addresses are
  refused, both as literal hosts and as what a host name resolves to (checked by the connector's
  resolver, on the addresses actually connected to), **unless the host is written literally in a
  ``fetch_allow`` entry** (e.g. ``http://127.0.0.1:8080/``), and except the hosts of the
  configured ``HTTP(S)_PROXY``.

Every refusal is a :class:`~agent.errors.RequestError` with code ``fetch_refused``; nothing is
fetched, nothing changes.
"""

from __future__ import annotations

import ipaddress
import socket
import urllib.request
from collections.abc import Sequence

from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import ThreadedResolver
from yarl import URL

from cutover.agent.errors import RequestError

__all__ = ["MAX_REDIRECTS", "FetchPolicy", "GuardedResolver", "blocked_address"]

MAX_REDIRECTS = 5

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_METADATA = frozenset(
    ipaddress.ip_address(a)
    for a in (
        "169.254.169.254",  # AWS, GCP, Azure, OpenStack, DigitalOcean, ...
        "169.254.170.2",  # AWS ECS task metadata
        "fd00:ec2::254",  # AWS IMDS over IPv6
        "100.100.100.200",  # Alibaba Cloud
    )
)


def blocked_address(ip: _Address) -> str | None:
    """Why ``ip`` may not be fetched from without an explicit ``fetch_allow`` entry, or None."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if ip in _METADATA:
        return "a cloud metadata address"
    if ip.is_loopback:
        return "a loopback address"
    if ip.is_link_local:
        return "a link-local address"
    if ip.is_unspecified:
        return "an unspecified address"
    if ip.is_multicast:
        return "a multicast address"
    return None


def _refused(message: str) -> RequestError:
    return RequestError(message, code="fetch_refused")


def _redacted(url: URL) -> str:
    return str(url.with_user(None).with_query(None).with_fragment(None))[:512]


def _under(url: URL, prefix: URL) -> bool:
    if (url.scheme, (url.host or "").lower(), url.port) != (
        prefix.scheme,
        (prefix.host or "").lower(),
        prefix.port,
    ):
        return False
    base = prefix.raw_path or "/"
    path = url.raw_path or "/"
    if base.endswith("/"):
        return path.startswith(base)
    return path == base or path.startswith(base + "/")


def _literal_ip(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None


class FetchPolicy:
    """The fetch rules of one config (module docstring). Pure: no I/O."""

    def __init__(self, allow: Sequence[str], proxy_hosts: Sequence[str] = ()) -> None:
        self.prefixes = [URL(p) for p in allow]  # validated by agent.config (AgentSection)
        self.listed_hosts = frozenset((p.host or "").lower() for p in self.prefixes)
        self.proxy_hosts = frozenset(h.lower() for h in proxy_hosts)

    @classmethod
    def from_env(cls, allow: Sequence[str]) -> FetchPolicy:
        """The policy with the proxies of ``HTTP_PROXY``/``HTTPS_PROXY`` (aiohttp's trust_env)."""
        hosts = [URL(u).host or "" for u in urllib.request.getproxies().values() if "://" in u]
        return cls(allow, [h for h in hosts if h])

    def check_url(self, url: URL) -> None:
        """Refuse a URL (the first, or a redirect target) the rules do not allow.

        Raises:
            RequestError: ``fetch_refused``.
        """
        if url.scheme not in ("http", "https") or not url.host:
            raise _refused("the fetch URL must be an absolute http:// or https:// URL with a host")
        if self.prefixes and not any(_under(url, p) for p in self.prefixes):
            raise _refused(
                f"{_redacted(url)} is not under any agent.fetch_allow prefix; add the store's "
                "URL prefix to fetch_allow in the agent config"
            )
        ip = _literal_ip(url.host)
        if ip is not None:
            self.check_address(url.host, ip)

    def check_address(self, host: str, ip: _Address) -> None:
        """Refuse connecting to ``ip`` (what ``host`` resolved to) unless ``host`` is listed.

        Raises:
            RequestError: ``fetch_refused``.
        """
        lowered = host.lower().strip("[]")
        if lowered in self.listed_hosts or host.lower() in self.listed_hosts:
            return
        if lowered in self.proxy_hosts:
            return
        why = blocked_address(ip)
        if why is not None:
            raise _refused(
                f"refusing to fetch from {host[:256]}: {ip} is {why}; list the store "
                "explicitly in agent.fetch_allow if this is intended"
            )


class GuardedResolver(AbstractResolver):
    """aiohttp resolver that checks every address a name resolves to (no DNS rebinding gap:
    the connector connects to exactly these addresses)."""

    def __init__(self, policy: FetchPolicy) -> None:
        self.policy = policy
        self._inner = ThreadedResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            ip = _literal_ip(result["host"])
            if ip is not None:
                self.policy.check_address(host, ip)
        return results

    async def close(self) -> None:
        await self._inner.close()
