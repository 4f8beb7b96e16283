"""Strict JSON for signed documents: what the agent parses before it trusts anything.

Rules: a size cap checked before parsing, UTF-8 without a byte-order mark, no duplicate keys (a
second ``"path"`` must not silently win), no NaN/Infinity. ``canonical_json`` is the builder's
deterministic form (sorted keys, no spaces, UTF-8, trailing newline); verifiers never re-serialise:
signatures cover the exact bytes.
"""

from __future__ import annotations

import json
from typing import Any

from cutover.agent.errors import CutoverError, ManifestError

__all__ = ["canonical_json", "strict_json_loads"]


def strict_json_loads(
    data: bytes, what: str, max_bytes: int, error: type[CutoverError] = ManifestError
) -> Any:
    """Parse JSON strictly: size cap, UTF-8 without BOM, no duplicate keys, no NaN/Infinity.

    Args:
        data: the raw bytes; what: what they are, for messages (``"manifest.json"``);
        max_bytes: the size cap; error: the class raised (a request body is a ``RequestError``).

    Raises:
        error: the bytes break one of the rules; the message names the rule.
    """

    def reject_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out = dict(pairs)  # in C; only a short dict means a repeated key, then find which
        if len(out) != len(pairs):
            seen: set[str] = set()
            for k, _ in pairs:
                if k in seen:
                    raise error(f"{what}: duplicate JSON key {k[:64]!r}")
                seen.add(k)
        return out

    def reject_constant(name: str) -> Any:
        raise error(f"{what}: JSON constant {name} is not allowed")

    if len(data) > max_bytes:
        raise error(f"{what} is {len(data)} bytes; the limit is {max_bytes}")
    if data.startswith(b"\xef\xbb\xbf"):
        raise error(f"{what} starts with a byte-order mark; write plain UTF-8")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what} is not valid UTF-8: {exc}") from exc
    try:
        return json.loads(text, object_pairs_hook=reject_duplicates, parse_constant=reject_constant)
    except ValueError as exc:  # JSONDecodeError, or an integer of over 4,300 digits
        raise error(f"{what} is not valid JSON: {exc}") from exc
    except RecursionError:
        raise error(f"{what} nests arrays or objects too deeply to be a valid document") from None


def canonical_json(obj: Any) -> bytes:
    """Deterministic JSON bytes: sorted keys, no spaces, UTF-8, trailing newline."""
    return (
        json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
        + "\n"
    ).encode("utf-8")
