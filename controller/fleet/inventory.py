"""``fleet.toml``: the controller's inventory of hosts, validated strictly.

Example::

    app = "ame"                          # default app of activate/rollback/status/log
    controller_key = "keys/ops"          # signs every request; relative to this file

    [concurrency]
    max_parallel = 10                    # hosts worked on at once
    timeout_s = 30                       # one API request
    upload_timeout_s = 3600              # one package upload

    [hosts.web-1]
    url = "https://web-1.example.net:7801"
    groups = ["web", "production"]
    tls_fingerprint = "sha256:AB:CD:..." # pin the agent's certificate (or tls_ca = "ca.pem")

    [[webhooks]]
    url = "https://hooks.slack.com/services/T000/B000/XXXX"
    events = ["deploy", "failure"]       # default: every event
    timeout_s = 5

Rules: unknown keys are errors (a typo never becomes a silent default); every error names the
file, the host and the key; host names are the table keys (unique by construction); a host's
``authority`` (the name the agent signs for) defaults to ``host[:port]`` of its URL. The file is
read by :func:`load_fleet` only: the one owner of this format.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from yarl import URL

from cutover.agent.errors import ConfigError

__all__ = [
    "FLEET_ENV",
    "NOTIFY_EVENTS",
    "Concurrency",
    "Fleet",
    "HostSpec",
    "WebhookSpec",
    "fleet_path",
    "load_fleet",
]

FLEET_ENV = "CUTOVER_FLEET"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
NotifyEvent = Literal["push", "activate", "rollback", "deploy", "failure", "rollout"]
NOTIFY_EVENTS: tuple[NotifyEvent, ...] = (
    "push", "activate", "rollback", "deploy", "failure", "rollout",
)  # fmt: skip


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _http_url(value: str, what: str) -> str:
    url = URL(value)
    if url.scheme not in ("http", "https") or not url.host:
        raise ValueError(f"{what} must be an http:// or https:// URL with a host, got {value!r}")
    return value


class HostSpec(_Strict):
    """One agent. ``name`` is filled from the table key."""

    name: str = ""
    url: str
    groups: list[str] = []
    authority: str | None = None  # the agent's configured agent.name; default host[:port]
    tls_ca: Path | None = None  # CA bundle (PEM) that signed the agent's certificate
    tls_fingerprint: str | None = None  # SHA-256 of the agent's DER certificate

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v.rstrip("/"), "url")

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[str]) -> list[str]:
        for g in v:
            if not NAME_RE.fullmatch(g):
                raise ValueError(f"group {g!r}: use letters, digits, '.', '_', '-'")
        return v

    @field_validator("tls_fingerprint")
    @classmethod
    def _fingerprint(cls, v: str | None) -> str | None:
        if v is None:
            return v
        hexdigits = v.lower().removeprefix("sha256:").replace(":", "")
        if not re.fullmatch(r"[0-9a-f]{64}", hexdigits):
            raise ValueError("must be the hex SHA-256 of the certificate (sha256:AB:CD:... ok)")
        return v

    @model_validator(mode="after")
    def _one_tls_setting(self) -> HostSpec:
        if self.tls_ca is not None and self.tls_fingerprint is not None:
            raise ValueError("set tls_ca or tls_fingerprint, not both")
        if (self.tls_ca or self.tls_fingerprint) and not self.url.startswith("https://"):
            raise ValueError("tls_ca/tls_fingerprint need an https:// url")
        return self


class WebhookSpec(_Strict):
    """A notification endpoint: receives JSON with a Slack-compatible ``text`` field."""

    url: str
    events: list[NotifyEvent] = Field(default_factory=lambda: list(NOTIFY_EVENTS))
    timeout_s: float = Field(default=5.0, gt=0, le=60)

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        return _http_url(v, "url")


class Concurrency(_Strict):
    max_parallel: int = Field(default=10, ge=1, le=1000)
    timeout_s: float = Field(default=30.0, gt=0, le=600)
    upload_timeout_s: float = Field(default=3600.0, gt=0)


class Fleet(_Strict):
    """The whole file. ``path`` is where it was read from (for messages)."""

    app: str | None = None
    controller_key: Path | None = None
    concurrency: Concurrency = Concurrency()
    hosts: dict[str, HostSpec]
    webhooks: list[WebhookSpec] = []
    path: Path = Path("fleet.toml")

    @field_validator("hosts", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        if not isinstance(v, Mapping):
            return v
        for k, h in v.items():
            if isinstance(h, Mapping) and "name" in h:
                raise ValueError(
                    f"host {k!r}: drop key 'name': the table key [hosts.{k}] is the name"
                )
        return {k: {**h, "name": k} if isinstance(h, Mapping) else h for k, h in v.items()}

    @field_validator("hosts")
    @classmethod
    def _host_names(cls, v: dict[str, HostSpec]) -> dict[str, HostSpec]:
        if not v:
            raise ValueError("at least one host is needed: add a [hosts.NAME] table")
        for name in v:
            if not NAME_RE.fullmatch(name):
                raise ValueError(f"host name {name!r}: use letters, digits, '.', '_', '-'")
        return v

    def groups(self) -> dict[str, list[str]]:
        """group -> host names, in file order."""
        out: dict[str, list[str]] = {}
        for h in self.hosts.values():
            for g in h.groups:
                out.setdefault(g, []).append(h.name)
        return out


def fleet_path(arg: str | None, env: Mapping[str, str] = os.environ) -> Path:
    """``--fleet FILE``, else ``$CUTOVER_FLEET``, else ``./fleet.toml``."""
    return Path(arg or env.get(FLEET_ENV) or "fleet.toml")


def _where(loc: tuple[int | str, ...]) -> str:
    """``hosts.web-1.url`` -> ``host 'web-1': key 'url'`` (the words an operator searches for)."""
    parts = [str(p) for p in loc]
    if len(parts) >= 2 and parts[0] == "hosts":
        rest = ".".join(parts[2:])
        return f"host {parts[1]!r}" + (f": key {rest!r}" if rest else "")
    if len(parts) >= 2 and parts[0] == "webhooks":
        rest = ".".join(parts[2:])
        return f"webhooks[{parts[1]}]" + (f": key {rest!r}" if rest else "")
    return f"key {'.'.join(parts)!r}" if parts else "(top level)"


def load_fleet(path: Path) -> Fleet:
    """Read and validate ``fleet.toml``; relative paths resolve against its directory.

    Raises:
        ConfigError: unreadable, not TOML, or invalid; the message names host and key.
    """
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"fleet file {path} not found: pass --fleet FILE or set {FLEET_ENV} "
            "(docs/controller.md describes fleet.toml)"
        ) from exc
    except OSError as exc:
        raise ConfigError(f"fleet file {path}: cannot read: {exc.strerror}") from exc
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"fleet file {path}: not valid TOML: {exc}") from exc
    if "path" in data:
        raise ConfigError(f"fleet file {path}: key 'path': Extra inputs are not permitted")
    try:
        fleet = Fleet.model_validate(data)
    except ValidationError as exc:
        problems = [
            f"{_where(e['loc'])}: {e['msg'].removeprefix('Value error, ')}"
            for e in exc.errors()[:5]
        ]
        raise ConfigError(f"fleet file {path}: " + "; ".join(problems)) from exc
    base = path.parent

    def resolve(p: Path | None) -> Path | None:
        return None if p is None else (p if p.is_absolute() else base / p)

    return fleet.model_copy(
        update={
            "path": path,
            "controller_key": resolve(fleet.controller_key),
            "hosts": {
                n: h.model_copy(update={"tls_ca": resolve(h.tls_ca)})
                for n, h in fleet.hosts.items()
            },
        }
    )
