"""Adopt: record the releases an earlier deploy tool (Capistrano, Deployer) left in an app root.

Cutover never deletes a directory it did not create: a ``releases/<name>`` that no record names
and that no interrupted staging of Cutover's own left behind is *foreign*. ``init`` refuses a root
holding foreign releases (or a ``current`` link that is not Cutover's) unless asked to adopt
them; ``cutover-agent adopt`` (or ``init --adopt``) records each foreign release directory as an
**adopted** release: unsigned, without a manifest, never activated and never pruned by Cutover,
usable only as a rollback target. An absolute ``current`` link into ``releases/`` is converted
to Cutover's relative ``releases/<name>`` (atomically). docs/migrating.md is the guide.

:func:`plan_adoption` is pure (what to record, given the state and what is on disk);
:func:`adopt` observes, plans and applies it under the app lock, *before* crash recovery (which
would refuse a ``current`` link it does not know).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from cutover.agent.errors import DriftError, StorageError
from cutover.agent.host.current import flip
from cutover.agent.host.layout import Layout
from cutover.agent.host.ledger import Ledger
from cutover.agent.host.lock import AppLock
from cutover.agent.host.state import AppState, ReleaseRecord, ReleaseStatus, utcnow

__all__ = ["Adoption", "adopt", "foreign_releases", "plan_adoption"]

_CUTOVER_PREFIX = "releases/"


@dataclass(frozen=True)
class Adoption:
    """What adopting changes: the releases to record (oldest first) and the new ``current``."""

    releases: tuple[str, ...]
    current: str | None  # the release ``current`` points at (None: no link)
    convert_link: bool  # ``current`` is not Cutover's relative form yet


def _order(name: str) -> tuple[int, int, str]:
    """Capistrano's timestamps and Deployer's counters, oldest first."""
    return (0, int(name), "") if name.isdigit() else (1, 0, name)


def foreign_releases(state: AppState, release_dirs: list[str], installing: set[str]) -> list[str]:
    """Release directories no record names and no interrupted Cutover staging left."""
    return sorted(
        (n for n in release_dirs if n not in state.releases and n not in installing), key=_order
    )


def plan_adoption(
    state: AppState, foreign: list[str], link: str | None, releases_dir: str
) -> Adoption:
    """Decide what ``adopt`` records, given the foreign release dirs and ``current``'s target.

    Raises:
        DriftError: ``current`` points somewhere that is not a release of this root.
    """
    current, convert = None, False
    if link is not None:
        if link.startswith(_CUTOVER_PREFIX) and "/" not in link[len(_CUTOVER_PREFIX) :]:
            current = link[len(_CUTOVER_PREFIX) :]
        else:
            parent, _, name = os.path.normpath(link).rpartition("/")
            if parent != releases_dir or not name:
                raise DriftError(
                    f"current -> {link!r} is not a release under {releases_dir}/; point it at "
                    "one by hand (ln -sfn releases/NAME current.tmp && mv -T current.tmp "
                    "current), then adopt again"
                )
            current, convert = name, True
        if current not in foreign and current not in state.releases:
            raise DriftError(f"current -> {link!r}, but {releases_dir}/{current} does not exist")
    return Adoption(tuple(foreign), current, convert)


def _observe(layout: Layout) -> tuple[list[str], set[str], str | None]:
    try:
        entries = sorted(layout.releases.iterdir())
        link = os.readlink(layout.current) if layout.current.is_symlink() else None
        installing = {p.name for p in layout.incoming.iterdir()}
    except OSError as exc:
        raise StorageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    if layout.current.exists() and not layout.current.is_symlink():
        raise DriftError(
            f"{layout.current} is a directory or file, not a link; move it into releases/ and "
            "link it (ln -s releases/NAME current), then adopt again"
        )
    dirs = [p.name for p in entries if p.is_dir() and not p.is_symlink()]
    ours = {n.removesuffix(Layout.INSTALLING) for n in installing if n.endswith(Layout.INSTALLING)}
    return dirs, ours, link


def apply_adoption(state: AppState, plan: Adoption, actor: str) -> None:
    """Record the adopted releases in ``state`` (pure: no disk)."""
    now = utcnow()
    for name in plan.releases:
        state.releases[name] = ReleaseRecord(
            version=name,
            status=ReleaseStatus.STAGED,
            seq=state.next_seq,
            manifest_digest="",
            adopted=True,
            staged_at=now,
            staged_by=actor,
        )
        state.next_seq += 1
    # They were live once, oldest first; what ``current`` points at is the active one.
    history = [n for n in plan.releases if n != plan.current]
    if plan.current is not None and plan.current in plan.releases:
        history.append(plan.current)
        state.current = plan.current
    state.activations = [*history, *(v for v in state.activations if v not in history)]


def adopt(layout: Layout, app: str, actor: str) -> tuple[Adoption, AppState]:
    """Adopt the foreign releases of an initialised app root (journaled as ``adopt``).

    Raises:
        LockedError: another operation holds the app. DriftError: ``current`` is not a release
            of this root. StorageError: the root cannot be read or the link not replaced.
    """
    layout.check(app)
    ledger = Ledger(app, layout)
    lock = AppLock(layout.lock_file, app, "adopt")
    lock.acquire()
    try:
        ledger.forget_head()
        state = ledger.load()
        dirs, installing, link = _observe(layout)
        plan = plan_adoption(
            state, foreign_releases(state, dirs, installing), link, str(layout.releases)
        )
        if not plan.releases and not plan.convert_link:
            return plan, state
        apply_adoption(state, plan, actor)
        if plan.convert_link and plan.current is not None:
            flip(layout, plan.current)
        ledger.log(
            "adopt",
            releases=list(plan.releases),
            current=plan.current,
            converted_link=link if plan.convert_link else None,
            actor=actor,
        )
        ledger.save(state)
        return plan, state
    finally:
        lock.release()


def preflight(root: Path) -> None:
    """What ``init --adopt`` would refuse, checked before ``init`` writes anything.

    Raises:
        DriftError: ``current`` is not a release of this root. StorageError: unreadable.
    """
    layout = Layout(root)
    if not layout.releases.is_dir() and not layout.current.is_symlink():
        return
    if layout.incoming.is_dir():
        dirs, installing, link = _observe(layout)
    else:
        dirs = [p.name for p in layout.releases.iterdir() if p.is_dir() and not p.is_symlink()]
        installing, link = (
            set(),
            (os.readlink(layout.current) if layout.current.is_symlink() else None),
        )
    plan_adoption(
        AppState(app="preflight"),
        foreign_releases(AppState(app="preflight"), dirs, installing),
        link,
        str(layout.releases),
    )


def survey(root: Path) -> tuple[str | None, list[str]]:
    """What ``init`` must not take over silently: the app whose state file or journal ``root``
    holds (None: none), and the release dirs and a ``current`` link it does not record (every
    release dir and any non-Cutover ``current``, when there is no state)."""
    layout = Layout(root)
    state: AppState | None = None
    try:
        owner: str | None = None
        if layout.state_file.exists():
            state = AppState.model_validate_json(layout.state_file.read_bytes())
            owner = state.app
        elif layout.journal_file.exists():  # initialised, nothing staged yet: the journal says
            with layout.journal_file.open("rb") as fh:
                first = fh.readline()
            owner = json.loads(first).get("app") if first.strip() else None
        known = set(state.releases) if state is not None else set()
        found = []
        if layout.releases.is_dir():
            found = [
                f"releases/{p.name}"
                for p in sorted(layout.releases.iterdir(), key=lambda p: _order(p.name))
                if p.is_dir() and not p.is_symlink() and p.name not in known
            ]
        if layout.current.is_symlink():
            target = os.readlink(layout.current)
            if not target.startswith(_CUTOVER_PREFIX) or "/" in target[len(_CUTOVER_PREFIX) :]:
                found.append(f"current -> {target}")
        elif layout.current.exists():
            found.append("current (not a link)")
    except OSError as exc:
        raise StorageError(f"cannot read {exc.filename}: {exc.strerror}") from exc
    except ValueError as exc:
        raise StorageError(
            f"{layout.state_file} is not a Cutover state file ({exc}); inspect it by hand"
        ) from exc
    return owner, found
