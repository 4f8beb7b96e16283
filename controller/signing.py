"""Request signing for the agent API: the four headers of one signed request, and the agent
name (``@authority``) a base URL implies. The only code in the controller that signs requests;
the profile itself (what is covered, how it is verified) is :mod:`cutover.agent.trust.httpsig`.
"""

from __future__ import annotations

import hashlib
import time

from yarl import URL

from cutover.agent.keys import PrivateKey
from cutover.agent.trust import httpsig

__all__ = ["DEFAULT_LIFETIME_S", "EMPTY_SHA256", "default_authority", "signed_headers"]

EMPTY_SHA256 = hashlib.sha256(b"").digest()
DEFAULT_LIFETIME_S = 60


def default_authority(base_url: str) -> str:
    """``host[:port]`` of ``base_url`` as the agent's name: lowercase, default port omitted."""
    url = URL(base_url)
    host = (url.host or "").lower()
    if ":" in host:
        host = f"[{host}]"
    port = url.explicit_port
    default = {"http": 80, "https": 443}.get(url.scheme)
    return host if port is None or port == default else f"{host}:{port}"


def signed_headers(
    key: PrivateKey,
    method: str,
    authority: str,
    path: str,
    query: str = "",
    *,
    content_type: str = "",
    body_sha256: bytes = EMPTY_SHA256,
    created: int | None = None,
    lifetime_s: int = DEFAULT_LIFETIME_S,
    nonce: str | None = None,
) -> dict[str, str]:
    """The four headers of a signed request (low level: tests craft variants from it).

    Args:
        key: the controller key.
        method: the HTTP method as sent.
        authority: the agent's configured name.
        path: the raw, percent-encoded path as sent.
        query: the raw query as sent, without ``?``.
        content_type: the exact Content-Type sent (``""`` without a body).
        body_sha256: SHA-256 of the exact body bytes (default: the empty body).
        created: Unix seconds (default: now); lifetime_s: ``expires - created`` (1-300).
        nonce: default a fresh :func:`agent.trust.httpsig.new_nonce`.

    Returns:
        ``Content-Type``, ``Content-Digest``, ``Signature-Input`` and ``Signature``.

    Raises:
        ValueError: the arguments would make a request every agent refuses.
    """
    created = int(time.time()) if created is None else created
    digest = httpsig.content_digest(body_sha256)
    signed = httpsig.sign_request(
        key,
        httpsig.RequestTarget(method=method, authority=authority, path=path, query=query),
        content_type=content_type,
        content_digest=digest,
        created=created,
        expires=created + lifetime_s,
        nonce=nonce or httpsig.new_nonce(),
    )
    return {
        "Content-Type": content_type,
        "Content-Digest": digest,
        "Signature-Input": signed.signature_input,
        "Signature": signed.signature,
    }
