"""Live reload of the agent config and the key files it names (docs/security-model.md, "Trust model").

Keys change only by editing files on the host; the agent notices by itself. Rules:

* the server reads the config through one :class:`ConfigHolder`; a reload swaps the whole
  :class:`~agent.config.LoadedConfig` in one assignment, so a request sees either the old or the
  new config, never a mix;
* a reload either loads completely (TOML valid, every key file readable and Ed25519) or changes
  nothing: ``config_reload_failed`` is logged with the error and the old config stays in force;
* the watcher observes the *directories* of the config file and of every key file (editors and
  config management replace files by rename, which a watch on the file itself would miss) and
  filters for the files it cares about; when a reload changes the set of files, it re-arms;
* SIGHUP (``systemctl reload``) triggers the same reload;
* ``listen``, ``tls_cert``, ``tls_key``, ``state_dir`` and the connection limits
  (:data:`RESTART_FIELDS`) are bound at start: a change is logged as needing a restart, and the
  running values stay;
* a reload also applies the ownership and mode rules of :mod:`agent.strictmodes`: an unsafe file
  is refused like an invalid one.

A removed controller key is refused from the first request after the reload; with the default
debounce this is within about a second of the file being written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog
import watchfiles

from cutover.agent.config import LoadedConfig, load_config
from cutover.agent.daemon.metrics import Metrics
from cutover.agent.errors import CutoverError

__all__ = ["RESTART_FIELDS", "ConfigHolder", "ConfigReloader", "diff_summary"]

log = structlog.get_logger(__name__)

RESTART_FIELDS = (
    "listen",
    "tls_cert",
    "tls_key",
    "state_dir",
    "header_timeout_s",
    "keepalive_timeout_s",
    "body_timeout_s",
    "max_connections",
    "max_unauthenticated_per_peer",
)

OnReload = Callable[[LoadedConfig, LoadedConfig], Awaitable[None]]


class ConfigHolder:
    """The config in force. Read ``.current`` once per request; never cache it longer."""

    def __init__(self, config: LoadedConfig) -> None:
        self._config = config
        self.generation = 1

    @property
    def current(self) -> LoadedConfig:
        return self._config

    def swap(self, new: LoadedConfig) -> LoadedConfig:
        """Put ``new`` in force; return the config it replaced."""
        old, self._config = self._config, new
        self.generation += 1
        return old


def _key_label(name: str, keyid: str, role: str) -> str:
    return f"{name}:{keyid[:16]}({role})"


def diff_summary(old: LoadedConfig, new: LoadedConfig) -> dict[str, Any]:
    """What changed between two configs, for the ``config_reloaded`` log line (no key material)."""
    out: dict[str, Any] = {}
    old_keys = {k: _key_label(v.name, k, v.role) for k, v in old.controller_keys.items()}
    new_keys = {k: _key_label(v.name, k, v.role) for k, v in new.controller_keys.items()}
    if added := sorted(new_keys[k] for k in new_keys.keys() - old_keys.keys()):
        out["controller_keys_added"] = added
    if removed := sorted(old_keys[k] for k in old_keys.keys() - new_keys.keys()):
        out["controller_keys_removed"] = removed
    if changed := sorted(
        new_keys[k] for k in new_keys.keys() & old_keys.keys() if new_keys[k] != old_keys[k]
    ):
        out["controller_keys_changed"] = changed
    if added_apps := sorted(new.apps.keys() - old.apps.keys()):
        out["apps_added"] = added_apps
    if removed_apps := sorted(old.apps.keys() - new.apps.keys()):
        out["apps_removed"] = removed_apps
    changed_apps = sorted(
        name
        for name in new.apps.keys() & old.apps.keys()
        if new.apps[name] != old.apps[name]
        or set(new.policies[name].keys) != set(old.policies[name].keys)
    )
    if changed_apps:
        out["apps_changed"] = changed_apps
    old_agent, new_agent = old.agent.model_dump(), new.agent.model_dump()
    fields = sorted(k for k in new_agent if new_agent[k] != old_agent[k])
    if fields:
        out["agent_changed"] = fields
    if restart := [f for f in fields if f in RESTART_FIELDS]:
        out["restart_required_for"] = restart
    return out


class ConfigReloader:
    """Reloads the config on file changes and on demand (SIGHUP)."""

    def __init__(
        self,
        holder: ConfigHolder,
        metrics: Metrics,
        *,
        on_reload: OnReload | None = None,
        debounce_ms: int = 300,
    ) -> None:
        self.holder = holder
        self.metrics = metrics
        self.on_reload = on_reload
        self.debounce_ms = debounce_ms
        self._lock = asyncio.Lock()

    async def reload(self, trigger: str) -> bool:
        """Load the config again and swap it in if it loads completely.

        Args:
            trigger: why (``file_changed``, ``sighup``), logged.

        Returns:
            True if the new config is in force; False if it failed (old config kept).
        """
        async with self._lock:
            path = self.holder.current.path
            try:
                new = await asyncio.to_thread(load_config, path)
            except CutoverError as exc:
                self.metrics.config_reloads.labels("failed").inc()
                log.error(
                    "config_reload_failed",
                    trigger=trigger,
                    config=str(path),
                    error=str(exc),
                    action="the previous config stays in force; fix the file",
                )
                return False
            old = self.holder.swap(new)
            self.metrics.config_reloads.labels("ok").inc()
            self.metrics.config_loaded.set_to_current_time()
            diff = diff_summary(old, new)
            log.info(
                "config_reloaded",
                trigger=trigger,
                config=str(path),
                changed=bool(diff),
                generation=self.holder.generation,
                **diff,
            )
            if diff.get("restart_required_for"):
                log.warning(
                    "config_restart_required",
                    fields=diff["restart_required_for"],
                    action="restart cutover-agent for these settings to take effect",
                )
            if self.on_reload is not None:
                try:
                    await self.on_reload(old, new)
                except Exception:
                    log.exception("config_reload_hook_failed")
            return True

    def _watched(self) -> frozenset[Path]:
        files: set[Path] = set()
        for f in self.holder.current.watched_files():
            p = Path(f).absolute()
            files.add(p)
            with contextlib.suppress(OSError):  # a symlinked key: watch where it points, too
                files.add(p.resolve())
        return frozenset(files)

    async def watch(self, stop: asyncio.Event) -> None:
        """Reload whenever a watched file changes, until ``stop`` is set."""
        while not stop.is_set():
            files = self._watched()
            dirs = sorted({str(f.parent) for f in files if f.parent.is_dir()})
            names = {str(f) for f in files}

            def wanted(_: watchfiles.Change, path: str, names: set[str] = names) -> bool:
                return path in names

            try:
                async for changes in watchfiles.awatch(
                    *dirs,
                    watch_filter=wanted,
                    stop_event=stop,
                    debounce=self.debounce_ms,
                    recursive=False,
                ):
                    log.debug("config_files_changed", files=sorted({p for _, p in changes}))
                    await self.reload("file_changed")
                    if self._watched() != files:
                        break  # re-arm on the new set of directories
            except Exception as exc:
                log.error("config_watch_failed", error=str(exc), retry_in_s=5)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=5)
