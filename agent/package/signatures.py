"""``signatures.json``: the one reader and writer of the signature list.

A JSON array (strict JSON, at most 1 MiB) of ``{"keyid", "sig"}`` objects: ``keyid`` is the
lowercase hex SHA-256 of the signer's raw Ed25519 public key, ``sig`` the standard base64 of the
64-byte signature over the exact bytes of ``manifest.json`` (docs/package-format.md, section 4).
Whether a signature is *valid* is decided in :mod:`agent.trust.policy`; this module only parses
and renders the list. Everything here is pure.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from cutover.agent._util.strict_json import canonical_json, strict_json_loads
from cutover.agent.errors import ManifestError
from cutover.agent.package.manifest import explain_validation

__all__ = [
    "MAX_SIGNATURES_BYTES",
    "SignatureEntry",
    "parse_signatures",
    "render_signatures",
    "with_signature",
]

MAX_SIGNATURES_BYTES = 1024 * 1024
_HEX = frozenset("0123456789abcdef")


class SignatureEntry(BaseModel):
    """One signer: its key id and its base64 signature over the manifest bytes."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    keyid: str
    sig: str

    @field_validator("keyid")
    @classmethod
    def _hex(cls, v: str) -> str:
        if len(v) != 64 or not _HEX.issuperset(v):
            raise ValueError(
                "keyid must be 64 lowercase hex digits (SHA-256 of the raw public key)"
            )
        return v

    @classmethod
    def of(cls, keyid: str, signature: bytes) -> SignatureEntry:
        """The entry for a raw Ed25519 ``signature`` made by key ``keyid``."""
        return cls(keyid=keyid, sig=base64.b64encode(signature).decode("ascii"))

    def signature(self) -> bytes:
        """The raw signature bytes.

        Raises:
            ValueError: ``sig`` is not valid standard base64.
        """
        try:
            return base64.b64decode(self.sig, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII text
            raise ValueError(f"signature by key {self.keyid[:16]} is not valid base64") from exc


def parse_signatures(data: bytes) -> list[SignatureEntry]:
    """Parse ``signatures.json``: a JSON list of ``{"keyid", "sig"}`` objects.

    Raises:
        ManifestError: not strict JSON, not a list, or an entry breaks the schema.
    """
    obj = strict_json_loads(data, "signatures.json", MAX_SIGNATURES_BYTES)
    if not isinstance(obj, list):
        raise ManifestError("signatures.json must be a JSON list of {keyid, sig} objects")
    try:
        return [SignatureEntry.model_validate(o) for o in obj]
    except ValidationError as exc:
        raise ManifestError(explain_validation(exc, "signatures.json")) from exc


def render_signatures(entries: Iterable[SignatureEntry]) -> bytes:
    """The canonical ``signatures.json`` bytes: entries sorted by key id, one per key.

    An empty list renders as ``[]`` plus a newline: an unsigned package.

    Raises:
        ManifestError: two entries carry the same key id.
    """
    by_key: dict[str, SignatureEntry] = {}
    for entry in entries:
        if entry.keyid in by_key:
            raise ManifestError(f"key {entry.keyid[:16]} appears twice in signatures.json")
        by_key[entry.keyid] = entry
    return canonical_json([by_key[k].model_dump() for k in sorted(by_key)])


def with_signature(entries: Iterable[SignatureEntry], new: SignatureEntry) -> list[SignatureEntry]:
    """``entries`` with ``new`` added, replacing an earlier signature by the same key."""
    return [*(e for e in entries if e.keyid != new.keyid), new]
