"""What a release declares for the host to run: hooks and health checks (the manifest's
``hooks`` and ``health``). Models only, pure; :mod:`agent.actions` runs them.

Strict like the rest of the manifest: unknown fields are errors, types are not coerced, argv lists
never a shell string, every timeout bounded, every regular expression compiled when read.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

__all__ = [
    "CommandCheck",
    "HealthCheck",
    "HealthPhase",
    "HealthSpec",
    "Hook",
    "Hooks",
    "HttpCheck",
    "LogCheck",
    "TcpCheck",
    "VersionProbe",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class Hook(_Model):
    """One command run at a lifecycle step: an argv list, never a shell string."""

    name: str = Field(min_length=1, max_length=100)
    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=300.0, gt=0, le=86400)
    # A run-once step (a migration): in a rollout, only the first canary host runs it; the
    # activation request says whether this host does (docs/rollouts.md). Locally: always.
    once: bool = False

    @field_validator("argv")
    @classmethod
    def _argv(cls, v: list[str]) -> list[str]:
        if any("\x00" in a for a in v) or not v[0]:
            raise ValueError("argv items must be non-empty strings without NUL")
        return v


class Hooks(_Model):
    stage: list[Hook] = []
    pre_activate: list[Hook] = []
    post_activate: list[Hook] = []
    post_rollback: list[Hook] = []
    # Run whenever an activation does not complete, before or after the flip (e.g. `artisan up`
    # after a `down` in pre_activate). None, not [], when absent: a manifest without it keeps
    # its exact canonical bytes, so agents that predate the field still accept it.
    on_failure: list[Hook] | None = None


class HttpCheck(_Model):
    type: Literal["http"]
    name: str = ""
    url: str = Field(pattern=r"^https?://")
    method: Literal["GET", "HEAD", "POST"] = "GET"
    expect_status: int = Field(default=200, ge=100, le=599)
    body_contains: str | None = None
    body_regex: str | None = None
    host: str | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=300)

    @field_validator("body_regex")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as exc:
                raise ValueError(f"body_regex does not compile: {exc}") from exc
        return v


class TcpCheck(_Model):
    type: Literal["tcp"]
    name: str = ""
    host: str = Field(min_length=1)
    port: int = Field(ge=1, le=65535)
    timeout_s: float = Field(default=3.0, gt=0, le=300)


class CommandCheck(_Model):
    type: Literal["command"]
    name: str = ""
    argv: list[str] = Field(min_length=1)
    timeout_s: float = Field(default=30.0, gt=0, le=3600)


class LogCheck(_Model):
    """Fails if a line matching ``pattern`` is appended to ``path`` after activation."""

    type: Literal["log"]
    name: str = ""
    path: str = Field(min_length=1)
    pattern: str = Field(min_length=1)

    @field_validator("pattern")
    @classmethod
    def _regex(cls, v: str) -> str:
        try:
            re.compile(v)
        except re.error as exc:
            raise ValueError(f"pattern does not compile: {exc}") from exc
        return v


HealthCheck = Annotated[HttpCheck | TcpCheck | CommandCheck | LogCheck, Field(discriminator="type")]


class HealthPhase(_Model):
    checks: list[HealthCheck] = []
    interval_s: float = Field(default=1.0, gt=0, le=3600)
    retries: int = Field(default=3, ge=0, le=1000)
    healthy_deadline_s: float = Field(default=60.0, gt=0, le=86400)
    min_healthy_time_s: float = Field(default=0.0, ge=0, le=86400)


class VersionProbe(_Model):
    """A URL whose body must contain the new version once the running app serves it."""

    url: str = Field(pattern=r"^https?://")
    host: str | None = None
    timeout_s: float = Field(default=5.0, gt=0, le=300)
    deadline_s: float = Field(default=30.0, gt=0, le=3600)


class HealthSpec(_Model):
    staged: HealthPhase = HealthPhase()
    live: HealthPhase = HealthPhase()
    version_probe: VersionProbe | None = None
