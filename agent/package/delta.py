"""``delta.json``: the unsigned member of a delta upload that describes its thin payload.

A delta upload is a container the controller makes per host (docs/package-format.md, "Delta
uploads"): ``manifest.json``, ``signatures.json``, ``delta.json``, then a *thin* payload holding
only the regular files that host lacks. The signed manifest's ``payload`` still describes the full
payload, so ``delta.json`` says what the thin one is::

    {"format": 1, "payload": {"sha256": "<hex>", "size": 1234, "compression": "zstd"}}

Trust does not come from this member: it is unsigned, and only tells the agent which bytes to
expect (transfer integrity, also covered by the request's signed ``Content-Digest``). Every file
of the tree is still checked against the signed manifest's per-file SHA-256
(docs/security-model.md, "Thin payloads"). This module is the format's one reader and writer.
"""

from __future__ import annotations

import json
import re
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cutover.agent._util.strict_json import strict_json_loads
from cutover.agent.errors import PackageFormatError

__all__ = [
    "DELTA_NAME",
    "MAX_DELTA_BYTES",
    "DeltaPayload",
    "DeltaSpec",
    "parse_delta",
    "render_delta",
]

DELTA_NAME: Final = "delta.json"
MAX_DELTA_BYTES: Final = 4096
_HEX64: Final = re.compile(r"[0-9a-f]{64}")


class DeltaPayload(BaseModel):
    """The thin payload actually shipped: compressed size, SHA-256 and codec."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    sha256: str
    size: int = Field(ge=0)
    compression: Literal["zstd", "gzip", "none"]

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not _HEX64.fullmatch(v):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        return v


class DeltaSpec(BaseModel):
    """The whole ``delta.json`` member."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    format: Literal[1]
    payload: DeltaPayload


def parse_delta(data: bytes) -> DeltaSpec:
    """Parse ``delta.json`` strictly (no duplicate keys, no unknown fields).

    Raises:
        PackageFormatError: not valid ``delta.json`` (code ``bad_delta``).
    """
    raw = strict_json_loads(data, DELTA_NAME, MAX_DELTA_BYTES, error=PackageFormatError)
    try:
        return DeltaSpec.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top level)"
        raise PackageFormatError(
            f"{DELTA_NAME} is invalid ({where}: {first['msg']}); the delta upload was not made by "
            "a compatible controller: push the full package (`cutover push --no-delta`)",
            code="bad_delta",
        ) from exc


def render_delta(spec: DeltaSpec) -> bytes:
    """The ``delta.json`` bytes of ``spec`` (sorted keys, compact)."""
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":")).encode()
