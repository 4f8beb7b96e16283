"""Request bodies and query parameters of the agent API, parsed strictly (docs/protocol.md).

Rules, so that what a controller signed means exactly one thing to the agent:

* a JSON body is ``Content-Type: application/json``, UTF-8 without a byte-order mark, one JSON
  object with **no duplicate keys** (``{"version": "1.0.1", "version": "1.0.0"}`` is a ``400``, not
  whichever value a parser happens to keep), no ``NaN``/``Infinity``;
* the models are pydantic with ``extra="forbid"`` and ``strict=True``: an unknown field, or a
  value of the wrong JSON type (``"restore": "yes"``, ``"restore": 1``), is a ``400``;
* a query parameter may appear **once**; an unknown one is a ``400``.
"""

from __future__ import annotations

from typing import TypeVar

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cutover.agent._util.strict_json import strict_json_loads
from cutover.agent.errors import RequestError, UnsupportedMediaTypeError
from cutover.agent.versions import VERSION_RE

__all__ = [
    "LEASE_ID_PATTERN",
    "MAX_DIGESTS",
    "ActivateBody",
    "FetchBody",
    "LeaseBody",
    "MissingBody",
    "RollbackBody",
    "check_query",
    "parse_json_body",
]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


LEASE_ID_PATTERN = r"^lease-[0-9a-f]{16}$"
_LABEL_PATTERN = r"^[A-Za-z0-9._:@/+-]{1,128}$"


class ActivateBody(_Body):
    version: str = Field(pattern=VERSION_RE.pattern)
    lease: str | None = Field(default=None, pattern=LEASE_ID_PATTERN)  # agent/daemon/leases.py
    run_once: bool = True  # False: skip the checkpoint and ``once`` hooks (not the first canary)


class RollbackBody(_Body):
    to: str | None = Field(default=None, pattern=VERSION_RE.pattern)
    restore: bool = False
    accept_db_risk: bool = False  # roll back across an unsafe database rollback (journaled)
    lease: str | None = Field(default=None, pattern=LEASE_ID_PATTERN)


class LeaseBody(_Body):
    """``POST /v1/apps/{app}/lease``: take (or renew, with ``lease``; or ``steal``) the lease."""

    rollout: str = Field(pattern=_LABEL_PATTERN)
    owner: str = Field(pattern=_LABEL_PATTERN)
    ttl_s: float = Field(gt=0, le=3600)
    steal: bool = False
    lease: str | None = Field(default=None, pattern=LEASE_ID_PATTERN)


class FetchBody(_Body):
    url: str = Field(min_length=1, max_length=8192)


MAX_DIGESTS = 200_000  # per `missing` request; fits auth.JSON_BODY_CAPS["missing"] (16 MiB)


class MissingBody(_Body):
    """``POST /v1/apps/{app}/releases/{version}/missing``: which of these contents the host lacks.

    ``digests``: SHA-256 hex digests, lowercase, each at most once, at most :data:`MAX_DIGESTS`.
    """

    digests: list[str] = Field(max_length=MAX_DIGESTS)

    @field_validator("digests")
    @classmethod
    def _digests(cls, v: list[str]) -> list[str]:
        bad = next((d for d in v if len(d) != 64 or d.strip("0123456789abcdef")), None)
        if bad is not None:
            raise ValueError(f"{bad[:70]!r} is not a lowercase SHA-256 hex digest")
        if len(set(v)) != len(v):
            raise ValueError("a digest is listed more than once")
        return v


_M = TypeVar("_M", bound=_Body)


def parse_json_body(content_type: str, raw: bytes, model: type[_M]) -> _M:
    """Parse and validate a JSON request body.

    Raises:
        RequestError: wrong media type (``415``), not strict JSON, or not valid for ``model``.
    """
    media = content_type.split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise UnsupportedMediaTypeError("send the body as Content-Type: application/json")
    # The body is already within MAX_JSON_BYTES (daemon/auth.py); only the JSON rules apply here.
    data = strict_json_loads(raw, "invalid request body", len(raw), error=RequestError)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise RequestError(f"invalid request body: {problems}") from exc


def check_query(request: web.Request, allowed: frozenset[str] = frozenset()) -> None:
    """Refuse unknown or repeated query parameters.

    Raises:
        RequestError: ``400`` naming them.
    """
    unknown = set(request.query) - allowed
    if unknown:
        names = ", ".join(sorted(n[:64] for n in unknown))
        raise RequestError(f"unknown query parameter(s): {names}")
    repeated = sorted(k for k in set(request.query) if len(request.query.getall(k)) > 1)
    if repeated:
        raise RequestError(f"query parameter(s) given more than once: {', '.join(repeated)}")
