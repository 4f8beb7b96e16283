"""Strict JSON for signed documents: what the agent parses before it trusts anything.

Rules: a size cap checked before parsing, UTF-8 without a byte-order mark, no duplicate keys (a
second ``"path"`` must not silently win), no NaN/Infinity. ``canonical_json`` is the builder's
deterministic form (sorted keys, no spaces, UTF-8, trailing newline); verifiers never re-serialise:
signatures cover the exact bytes.
"""

from __future__ import annotations

import json
from typing import Any

from cutover.agent.errors import ManifestError

__all__ = ["canonical_json", "strict_json_loads"]


def _reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ManifestError(f"duplicate JSON key {k!r}")
        out[k] = v
    return out


def _reject_constant(name: str) -> Any:
    raise ManifestError(f"JSON constant {name} is not allowed")


def strict_json_loads(data: bytes, what: str, max_bytes: int) -> Any:
    """Parse JSON strictly: size cap, UTF-8 without BOM, no duplicate keys, no NaN/Infinity."""
    if len(data) > max_bytes:
        raise ManifestError(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    if data.startswith(b"\xef\xbb\xbf"):
        raise ManifestError(f"{what} starts with a byte-order mark; write plain UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(f"{what} is not valid UTF-8: {exc}") from exc
    try:
        return json.loads(
            text, object_pairs_hook=_reject_duplicates, parse_constant=_reject_constant
        )
    except json.JSONDecodeError as exc:
        raise ManifestError(f"{what} is not valid JSON: {exc}") from exc


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, trailing newline."""
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        + "\n"
    ).encode("utf-8")
