"""The agent's TOML config (default ``/etc/cutover/agent.toml``), validated strictly.

Example::

    [agent]
    name = "web-1.example.net:7801"   # the @authority requests must be signed for
    listen = "0.0.0.0:7801"
    state_dir = "/var/lib/cutover"

    [[controller_keys]]
    name = "ops"
    path = "keys/ops.pub"              # relative paths are relative to this file
    role = "deploy"                    # or "read"

    [apps.ame]
    root = "/srv/ame"
    release_keys = ["keys/release.pub"]   # or {path = "keys/tech.pub", roles = ["technical"]}
    threshold = 1
    keep = 5
    versioning = "semver"                 # optional: release type must match the bump
    allowed_branches = ["main", "fix/*"]  # optional: the signed branch must match one

    [apps.ame.approvals]                  # optional: roles that must sign, by release type
    minor = ["technical", "product"]
    destructive_migration = ["technical", "management"]

Governance (roles, approvals, versioning, branches) is described in docs/governance.md.

Every error names the file, the key and what is wrong. Key files are loaded with the config, so a
reload either swaps in a complete new config or keeps the old one in force.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from cutover.agent._util.fsutil import atomic_write
from cutover.agent.errors import ConfigError, KeyFileError
from cutover.agent.keys import PublicKey, load_public_key
from cutover.agent.package.manifest import APP_RE, Hook
from cutover.agent.strictmodes import check_trusted_file, check_unshared_dir
from cutover.agent.trust.approvals import ApprovalMatrix
from cutover.agent.trust.freeze import FreezeSchedule
from cutover.agent.trust.policy import TrustPolicy
from cutover.agent.trust.requirements import Requirements
from cutover.agent.trust.rules import Versioning

__all__ = [
    "DEFAULT_CONFIG",
    "AgentConfig",
    "AgentSection",
    "AppSection",
    "ControllerKey",
    "LoadedConfig",
    "LoadedKey",
    "ReleaseKey",
    "add_app_to_config",
    "load_config",
]

DEFAULT_CONFIG = Path(os.environ.get("CUTOVER_AGENT_CONFIG", "/etc/cutover/agent.toml"))


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AgentSection(_Strict):
    name: str = Field(default="localhost:7801", min_length=1)
    listen: str = "127.0.0.1:7801"
    state_dir: Path = Path("/var/lib/cutover")
    tls_cert: Path | None = None
    tls_key: Path | None = None
    max_upload_bytes: int = Field(default=8 * 1024**3, gt=0)
    upload_timeout_s: float = Field(default=900.0, gt=0)
    upload_idle_timeout_s: float = Field(default=30.0, gt=0)
    # Extract a chunked upload while it arrives (agent/daemon/streaming.py, docs/operations.md).
    stream_uploads: bool = True
    fetch_timeout_s: float = Field(default=3600.0, gt=0)
    # Interrupted uploads kept for resuming (agent/daemon/uploads.py); 0 partials: never kept.
    upload_resume_ttl_s: float = Field(default=3600.0, gt=0)
    upload_resume_per_app: int = Field(default=2, ge=0, le=16)
    upload_resume_max_bytes: int = Field(default=8 * 1024**3, ge=0)
    max_request_lifetime_s: int = Field(default=300, gt=0, le=300)
    clock_skew_s: int = Field(default=30, ge=0, le=30)  # httpsig.MAX_SKEW_S
    drain_timeout_s: float = Field(default=60.0, gt=0)
    json_body_timeout_s: float = Field(default=60.0, gt=0)
    header_timeout_s: float = Field(default=10.0, gt=0)
    keepalive_timeout_s: float = Field(default=15.0, gt=0)
    body_timeout_s: float = Field(default=60.0, gt=0)
    max_connections: int = Field(default=1024, ge=16)
    max_unauthenticated_per_peer: int = Field(default=32, ge=1)
    fetch_allow: list[str] = []
    log_format: Literal["auto", "json", "console"] = "auto"

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not re.fullmatch(
            r"[a-z0-9]([a-z0-9.-]*[a-z0-9])?(:[0-9]{1,5})?|\[[0-9a-f:.]+\](:[0-9]{1,5})?", v
        ):
            raise ValueError(
                "name must be the lowercase host or host:port the controller uses to reach this "
                "agent (default port omitted), e.g. web-1.example.net:7801"
            )
        return v

    @field_validator("fetch_allow")
    @classmethod
    def _fetch_allow(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        from yarl import URL  # only when the config names fetch prefixes (daemon fetch)

        for prefix in v:
            url = URL(prefix)
            if url.scheme not in ("http", "https") or not url.host:
                raise ValueError(
                    f"fetch_allow entry {prefix!r} must be an absolute http(s) URL prefix, "
                    "e.g. https://artifacts.example.net/releases/"
                )
            if url.user or url.password or url.query_string or url.fragment:
                raise ValueError(
                    f"fetch_allow entry {prefix!r} must not have userinfo, query or fragment"
                )
        return v

    @field_validator("listen")
    @classmethod
    def _listen(cls, v: str) -> str:
        host, sep, port = v.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError("listen must be HOST:PORT, e.g. 127.0.0.1:7801")
        return v


class ControllerKey(_Strict):
    name: str = ""
    path: Path
    role: Literal["read", "deploy"] = "deploy"


class HostHooks(_Strict):
    """Host-local hooks, run after the release's own hooks of the same step."""

    post_activate: list[Hook] = []
    post_rollback: list[Hook] = []
    on_failure: list[Hook] = []


class ReleaseKey(_Strict):
    """A trusted release key with the roles its signature approves for (docs/governance.md)."""

    path: Path
    roles: list[str] = Field(default=[], max_length=32)

    @field_validator("roles")
    @classmethod
    def _roles(cls, v: list[str]) -> list[str]:
        for role in v:
            if not re.fullmatch(r"[a-z][a-z0-9_-]{0,63}", role):
                raise ValueError(f"role {role!r} must match [a-z][a-z0-9_-]*, e.g. technical")
        return v


class AppSection(_Strict):
    root: Path
    release_keys: list[Path | ReleaseKey] = Field(min_length=1)
    threshold: int = Field(default=1, ge=1)
    approvals: ApprovalMatrix = ApprovalMatrix()
    versioning: Versioning = "any"
    allowed_branches: list[str] | None = None
    freeze: FreezeSchedule = FreezeSchedule()
    require: Requirements = Requirements()
    keep: int = Field(default=5, ge=1, le=1000)
    # Retention by disk (agent/host/diskspace.py): before a stage writes, prune the oldest
    # prunable releases so that the root's filesystem keeps this much free; 0 = off.
    min_free_bytes: int = Field(default=0, ge=0)
    min_free_pct: float = Field(default=0.0, ge=0, lt=100)
    # Where staging takes files the host already holds (docs/lifecycle.md, "Reusing files"):
    # auto = reflink, else hardlink when no stage/pre_activate hook, else copy; hardlink = the
    # operator asserts hooks never write in place; copy; off = every file from the payload.
    reuse: Literal["auto", "hardlink", "copy", "off"] = "auto"
    allow_downgrade: bool = False
    checkpoint: list[str] | None = None
    checkpoint_timeout_s: float = Field(default=1800.0, gt=0)
    restore: list[str] | None = None
    hooks: HostHooks = HostHooks()
    hook_output_cap_bytes: int = Field(default=65536, ge=1024, le=16 * 1024 * 1024)
    hook_path: str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

    @field_validator("root")
    @classmethod
    def _abs(cls, v: Path) -> Path:
        if not v.is_absolute():
            raise ValueError("root must be an absolute path, e.g. /srv/ame")
        return v

    def release_key_entries(self) -> list[ReleaseKey]:
        """Every trusted release key as a path with roles (a bare path has none)."""
        return [k if isinstance(k, ReleaseKey) else ReleaseKey(path=k) for k in self.release_keys]


class AgentConfig(_Strict):
    agent: AgentSection = AgentSection()
    controller_keys: list[ControllerKey] = []
    apps: dict[str, AppSection] = {}

    @field_validator("apps")
    @classmethod
    def _names(cls, v: dict[str, AppSection]) -> dict[str, AppSection]:
        for name in v:
            if not APP_RE.fullmatch(name):
                raise ValueError(f"app name {name!r} must match [a-z0-9][a-z0-9_-]{{0,63}}")
        return v


@dataclass(frozen=True)
class LoadedKey:
    key: PublicKey
    role: str
    name: str


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config with every key file loaded."""

    path: Path
    config: AgentConfig
    controller_keys: dict[str, LoadedKey]
    policies: dict[str, TrustPolicy]

    @property
    def agent(self) -> AgentSection:
        return self.config.agent

    @property
    def apps(self) -> dict[str, AppSection]:
        return self.config.apps

    def watched_files(self) -> set[Path]:
        files = {self.path}
        files.update(k.path for k in self.config.controller_keys)
        for app in self.config.apps.values():
            files.update(k.path for k in app.release_key_entries())
        return files


def _resolve(base: Path, p: Path) -> Path:
    return p if p.is_absolute() else (base / p).resolve()


def _load_raw(path: Path) -> AgentConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise ConfigError(
            f"config {path} not found: create it with `cutover-agent --config {path} init ...` "
            "or pass --config"
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    return _parse(text, path)


def _parse(text: str, path: Path) -> AgentConfig:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config {path}: not valid TOML: {exc}") from exc
    try:
        # Strict: ``keep = "5"`` is a string, not a number (JSON mode, so paths may be strings).
        cfg = AgentConfig.model_validate_json(json.dumps(data, default=str), strict=True)
    except ValidationError as exc:
        problems = [_problem(err) for err in exc.errors()]
        raise ConfigError(
            f"config {path}: {len(problems)} problem{'s' if len(problems) > 1 else ''}: "
            + "; ".join(problems)
        ) from exc
    base = path.parent
    return cfg.model_copy(
        update={
            "agent": cfg.agent.model_copy(
                update={
                    "state_dir": _resolve(base, cfg.agent.state_dir),
                    "tls_cert": cfg.agent.tls_cert and _resolve(base, cfg.agent.tls_cert),
                    "tls_key": cfg.agent.tls_key and _resolve(base, cfg.agent.tls_key),
                }
            ),
            "controller_keys": [
                k.model_copy(update={"path": _resolve(base, k.path)}) for k in cfg.controller_keys
            ],
            "apps": {
                name: a.model_copy(
                    update={
                        "release_keys": [
                            k.model_copy(update={"path": _resolve(base, k.path)})
                            for k in a.release_key_entries()
                        ]
                    }
                )
                for name, a in cfg.apps.items()
            },
        }
    )


def _known_keys() -> set[str]:
    models: list[type[BaseModel]] = [AgentConfig, AgentSection, AppSection, HostHooks]
    models += [ControllerKey, Hook]
    return {name for m in models for name in m.model_fields}


def _problem(err: Any) -> str:
    """One validation error as ``where: what`` (with the close match of a misspelt key)."""
    loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
    msg = str(err["msg"])
    if err["type"] == "extra_forbidden" and err["loc"]:
        key = str(err["loc"][-1])
        known = sorted(_known_keys())
        close = [k for k in known if key.startswith(k + "_") or key.endswith("_" + k)]
        close += difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        if close:
            msg += f" (did you mean {close[0]!r}?)"
    return f"{loc}: {msg}"


def load_config(path: Path) -> LoadedConfig:
    """Read, validate and load every key the config names.

    Raises:
        ConfigError: the file or a key file is missing or invalid (the message names which), or
            a file or directory it trusts is unsafe (:mod:`agent.strictmodes`).
    """
    check_trusted_file(path, "config")
    cfg = _load_raw(path)
    _check_modes(path, cfg)
    controller: dict[str, LoadedKey] = {}
    release_ids: set[str] = set()
    policies: dict[str, TrustPolicy] = {}
    try:
        for name, app in cfg.apps.items():
            keys: dict[str, PublicKey] = {}
            roles: dict[str, frozenset[str]] = {}
            for entry in app.release_key_entries():
                k = load_public_key(entry.path)
                keys[k.keyid] = k
                roles[k.keyid] = roles.get(k.keyid, frozenset()) | frozenset(entry.roles)
            if app.threshold > len(keys):
                raise ConfigError(
                    f"config {path}: apps.{name}.threshold is {app.threshold} but only "
                    f"{len(keys)} distinct release keys are trusted"
                )
            release_ids.update(keys)
            policies[name] = TrustPolicy(
                app=name,
                keys=keys,
                threshold=app.threshold,
                key_roles={k: r for k, r in roles.items() if r},
                approvals=app.approvals,
                versioning=app.versioning,
                allowed_branches=(
                    tuple(app.allowed_branches) if app.allowed_branches is not None else None
                ),
                requirements=app.require,
            )
        for i, ck in enumerate(cfg.controller_keys):
            k = load_public_key(ck.path)
            if k.keyid in controller:
                raise ConfigError(f"config {path}: controller_keys[{i}] repeats key {k.keyid[:16]}")
            controller[k.keyid] = LoadedKey(k, ck.role, ck.name or ck.path.stem)
    except KeyFileError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc
    both = release_ids & controller.keys()
    if both:
        raise ConfigError(
            f"config {path}: key {sorted(both)[0][:16]} is both a release key and a controller "
            "key; the roles must use different keys"
        )
    return LoadedConfig(path, cfg, controller, policies)


def _check_modes(path: Path, cfg: AgentConfig) -> None:
    """StrictModes for every file and directory the config makes the agent trust."""
    try:
        for ck in cfg.controller_keys:
            check_trusted_file(ck.path, "controller key")
        for name, app in cfg.apps.items():
            for entry in app.release_key_entries():
                check_trusted_file(entry.path, f"release key of app {name}")
            check_unshared_dir(app.root, f"app root of {name}")
        for tls, what in ((cfg.agent.tls_cert, "TLS certificate"), (cfg.agent.tls_key, "TLS key")):
            if tls is not None:
                check_trusted_file(tls, what)
        check_unshared_dir(cfg.agent.state_dir, "state_dir")
    except ConfigError as exc:
        raise ConfigError(f"config {path}: {exc}") from exc


def add_app_to_config(path: Path, app: str, root: Path, release_keys: Sequence[Path]) -> None:
    """Append an ``[apps.NAME]`` section to the config (created if missing), atomically.

    Raises:
        ConfigError: the app exists already, another app uses ``root``, or the result would not
            validate.
    """
    for key in release_keys:
        try:
            load_public_key(key)
        except KeyFileError as exc:
            raise ConfigError(f"--trust-release-key: {exc}") from exc
    existing = path.read_text(encoding="utf-8") if path.exists() else ""
    if existing:
        apps = _load_raw(path).apps
        if app in apps:
            raise ConfigError(f"config {path}: app {app!r} exists already; edit the file instead")
        for other, app_section in apps.items():
            if app_section.root.resolve() == root.resolve():
                raise ConfigError(
                    f"config {path}: app {other!r} already uses the root {root}; every app needs "
                    "its own root (choose another --root)"
                )
    keys = ", ".join(dict.fromkeys(_toml_str(str(k.resolve())) for k in release_keys))
    section = (
        f"\n[apps.{app}]\n"
        f"root = {_toml_str(str(root))}\n"
        f"release_keys = [{keys}]\n"
        "threshold = 1\nkeep = 5\n"
    )
    text = existing.rstrip("\n") + ("\n" if existing else "") + section
    _parse(text, path)  # never write a config that would not load
    st = path.stat() if existing else None
    try:
        path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        atomic_write(path, text.encode(), st.st_mode & 0o7777 if st else 0o640)
    except OSError as exc:
        raise ConfigError(
            f"cannot write config {path}: {exc.strerror}; run init as a user that may write it "
            "(usually root), or pass --config"
        ) from exc
    if st is not None and (st.st_uid, st.st_gid) != (os.geteuid(), os.getegid()):
        # keep the owner/group the daemon reads it as (e.g. root:cutover 0640)
        with contextlib.suppress(OSError):
            os.chown(path, st.st_uid, st.st_gid)


def _toml_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'
