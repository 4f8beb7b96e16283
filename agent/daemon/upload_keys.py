"""What names a partial upload: its key (app, version, package SHA-256), the key that sent it, and
the refusal of a resume at the wrong offset (the rules: agent/daemon/uploads.py)."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cutover.agent.errors import RequestError, UploadOffsetError
from cutover.agent.versions import VERSION_RE

__all__ = ["PART_RE", "SHA256_RE", "UploadKey", "offset_error", "owner_of"]

SHA256_RE = re.compile(r"[0-9a-f]{64}")
_VERSION = VERSION_RE.pattern.removeprefix("^").removesuffix("$")
PART_RE = re.compile(
    rf"(?P<sha256>[0-9a-f]{{64}})_(?P<version>{_VERSION})\.(?P<owner>[0-9a-f]{{16}})\.part"
)

_OFFSET_DIGITS = 20


def owner_of(keyid: str) -> str:
    """How a partial's name records the key that sent its bytes: 16 hex of SHA-256(keyid)."""
    return hashlib.sha256(keyid.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UploadKey:
    """What names an upload: app, version and the SHA-256 (hex) of the whole package file."""

    app: str
    version: str
    sha256: str

    def filename(self, owner: str) -> str:
        return f"{self.sha256}_{self.version}.{owner}.part"

    @classmethod
    def of_request(
        cls, app: str, version: str, query: Any, content_digest: bytes
    ) -> tuple[UploadKey, int]:
        """The key and offset a (signed) upload request names.

        Args:
            query: the request's query (``sha256``, ``offset``; already checked for unknown or
                repeated names).
            content_digest: the request's signed body digest: the package's for a plain upload.

        Raises:
            RequestError: a malformed ``sha256`` or ``offset``, or an offset without ``sha256``.
        """
        sha = query.get("sha256")
        raw = query.get("offset")
        if sha is None:
            if raw is not None:
                raise RequestError("offset needs sha256: the digest of the whole package")
            return cls(app, version, content_digest.hex()), 0
        if not SHA256_RE.fullmatch(sha):
            raise RequestError("sha256 must be the package's SHA-256 as 64 lowercase hex digits")
        if raw is None:
            return cls(app, version, sha), 0
        if not raw.isascii() or not raw.isdigit() or len(raw) > _OFFSET_DIGITS:
            raise RequestError("offset must be a non-negative integer (bytes already sent)")
        return cls(app, version, sha), int(raw)


def offset_error(
    key: UploadKey, offset: int, found: tuple[Path, str, int] | None, owner: str
) -> UploadOffsetError:
    """The refusal of a resume at ``offset``, naming the offset the caller may resume from."""
    if found is not None and found[1] != owner:
        return UploadOffsetError(
            f"{key.app} {key.version}: the {found[2]} bytes the agent holds of this package were "
            "sent with another key, and a resume never appends to another key's bytes; upload "
            "it from offset 0",
            offset=0,
        )
    held = 0 if found is None else found[2]
    return UploadOffsetError(
        f"{key.app} {key.version}: the agent holds {held} bytes of this package, not {offset}; "
        f"resume at offset {held}",
        offset=held,
    )
