"""Host rules on what a release claims to be: its type against its version bump, its branch (pure).

Rules (docs/governance.md):

1. ``versioning = "semver"``: the version must be SemVer 2.0.0 (``1.4.2``), and its release type
   must match the bump over the highest version this host has staged:

   * ``patch`` and ``hotfix``: same MAJOR.MINOR, higher PATCH;
   * ``minor``: same MAJOR, higher MINOR;
   * ``major``: higher MAJOR;
   * ``security`` and ``infrastructure``: any bump (they follow the bump they make).

   So nobody labels a feature release "patch" to need fewer approvals. The first release on a
   host has nothing to bump over and any type is accepted. Re-staging a known version is not a
   bump (the caller checks immutability first).
2. ``allowed_branches``: when the list is set, the manifest's signed ``branch`` must match one of
   its glob patterns (``fnmatch``, case-sensitive: ``stg-*``); an empty branch never matches.
"""

from __future__ import annotations

from collections.abc import Sequence
from fnmatch import fnmatchcase
from typing import Literal

from cutover.agent.errors import MismatchError
from cutover.agent.package.manifest import Manifest, ReleaseType
from cutover.agent.versions import semver_core

__all__ = ["Versioning", "check_branch", "check_release_type", "implied_type"]

Versioning = Literal["any", "semver"]

_FOLLOWS_BUMP = {ReleaseType.SECURITY, ReleaseType.INFRASTRUCTURE}
_BUMP_OF: dict[ReleaseType, str] = {
    ReleaseType.PATCH: "patch",
    ReleaseType.HOTFIX: "patch",
    ReleaseType.MINOR: "minor",
    ReleaseType.MAJOR: "major",
}


def implied_type(new: tuple[int, int, int], highest: tuple[int, int, int]) -> str | None:
    """``major``, ``minor`` or ``patch`` for the bump from ``highest`` to ``new`` (None: not
    higher in its MAJOR.MINOR.PATCH core, e.g. a pre-release of the same core)."""
    if new[0] > highest[0]:
        return "major"
    if new[0] == highest[0] and new[1] > highest[1]:
        return "minor"
    if new[:2] == highest[:2] and new[2] > highest[2]:
        return "patch"
    return None


def check_release_type(manifest: Manifest, highest: str | None, versioning: Versioning) -> None:
    """Rule 1 of the module docstring.

    Raises:
        MismatchError: code ``not_semver`` or ``release_type``; the message says which type the
            bump implies.
    """
    if versioning != "semver":
        return
    core = semver_core(manifest.version)
    if core is None:
        raise MismatchError(
            f'{manifest.app} {manifest.version}: this app uses SemVer (versioning = "semver"), '
            "so versions must be MAJOR.MINOR.PATCH, e.g. 1.4.2; rebuild with a SemVer version",
            code="not_semver",
        )
    rtype = ReleaseType(manifest.release_type)
    base = semver_core(highest) if highest is not None else None
    if base is None or rtype in _FOLLOWS_BUMP:
        return
    implied = implied_type(core, base)
    if implied != _BUMP_OF[rtype]:
        what = (
            f"the bump from {highest} implies a {implied} release"
            if implied
            else f"it does not raise MAJOR.MINOR.PATCH over {highest}"
        )
        allowed = "patch or hotfix" if implied == "patch" else implied
        raise MismatchError(
            f"{manifest.app} {manifest.version} is labelled {rtype.value}, but {what}; "
            + (
                f"rebuild it with release_type = {allowed!r} (and the approvals that type needs)"
                if implied
                else "choose a version above the highest one staged here"
            ),
            code="release_type",
        )


def check_branch(manifest: Manifest, allowed: Sequence[str] | None) -> None:
    """Rule 2 of the module docstring.

    Raises:
        MismatchError: code ``branch``; the message names the rule that was hit.
    """
    if allowed is None:
        return
    if manifest.branch and any(fnmatchcase(manifest.branch, pat) for pat in allowed):
        return
    raise MismatchError(
        f"{manifest.app} {manifest.version} was built from branch "
        f"{manifest.branch or '(none recorded)'!r}, which this host does not deploy: "
        f"allowed_branches = {list(allowed)!r}; build from an allowed branch (cutover build "
        "--branch), or change the host's apps.<app>.allowed_branches",
        code="branch",
    )
