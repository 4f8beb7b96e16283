"""Release version names and their ordering.

Rules (docs/package-format.md, "Versions"):

* A version is a string of 1-128 characters from ``[A-Za-z0-9._+-]``, starting with an alphanumeric.
  It names a directory under ``releases/``, so nothing else is ever allowed.
* Ordering: if both versions are valid PEP 440 (this covers CalVer such as ``2026.03.7`` and
  plain ``1.2.3``), PEP 440 ordering applies (``2026.03.7`` == ``2026.3.7`` < ``2026.3.10``).
  Otherwise, if both are valid SemVer 2.0.0, SemVer precedence applies (build metadata ignored).
  Otherwise the two versions cannot be ordered and :func:`compare` raises; the agent then treats
  the newer-or-older question as unanswerable and refuses a downgrade-sensitive operation unless the
  operator allows it locally.
* Identity is the exact string: ``2026.03.7`` and ``2026.3.7`` are different releases that sort equal.
"""

from __future__ import annotations

import re
from functools import total_ordering

from packaging.version import InvalidVersion
from packaging.version import Version as Pep440

from cutover.agent.errors import ManifestError

__all__ = [
    "VERSION_RE",
    "Incomparable",
    "compare",
    "is_older",
    "semver_core",
    "validate_version",
]

VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")

_SEMVER_RE = re.compile(
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-((?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*)(?:\.(?:0|[1-9]\d*|\d*[A-Za-z-][0-9A-Za-z-]*))*))?"
    r"(?:\+([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?$"
)


class Incomparable(ValueError):  # noqa: N818 - a ValueError subtype, not part of the error tree
    """Two versions use schemes that cannot be ordered against each other."""


def validate_version(version: str) -> str:
    """Return ``version`` if it is a safe version name, else raise :class:`ManifestError`."""
    if not VERSION_RE.fullmatch(version):
        raise ManifestError(
            f"invalid version {version!r}: use 1-128 characters from [A-Za-z0-9._+-], "
            "starting with a letter or digit (e.g. 2026.03.7 or 1.4.2)"
        )
    return version


@total_ordering
class _SemVer:
    def __init__(self, match: re.Match[str]) -> None:
        self.core = (int(match[1]), int(match[2]), int(match[3]))
        self.pre: tuple[tuple[int, int | str], ...] | None = (
            tuple((0, int(p)) if p.isdigit() else (1, p) for p in match[4].split("."))
            if match[4]
            else None
        )

    def _key(self) -> tuple[object, ...]:
        # A release without pre-release sorts after every pre-release of the same core.
        return (self.core, (1,) if self.pre is None else (0, self.pre))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _SemVer) and self._key() == other._key()

    def __lt__(self, other: _SemVer) -> bool:
        return self._key() < other._key()  # type: ignore[operator,unused-ignore]


def semver_core(version: str) -> tuple[int, int, int] | None:
    """MAJOR, MINOR, PATCH of a SemVer 2.0.0 version, or None if ``version`` is not SemVer."""
    m = _SEMVER_RE.fullmatch(version)
    return None if m is None else (int(m[1]), int(m[2]), int(m[3]))


def _pep440(v: str) -> Pep440 | None:
    try:
        return Pep440(v)
    except InvalidVersion:
        return None


def compare(a: str, b: str) -> int:
    """Return -1, 0 or 1 as ``a`` sorts before, equal to, or after ``b``.

    Raises:
        Incomparable: the two versions share no ordering scheme.
    """
    pa, pb = _pep440(a), _pep440(b)
    if pa is not None and pb is not None:
        return (pa > pb) - (pa < pb)
    ma, mb = _SEMVER_RE.fullmatch(a), _SEMVER_RE.fullmatch(b)
    if ma and mb:
        sa, sb = _SemVer(ma), _SemVer(mb)
        return (sa > sb) - (sa < sb)
    raise Incomparable(
        f"versions {a!r} and {b!r} cannot be ordered: use one scheme (PEP 440, SemVer or CalVer)"
    )


def is_older(candidate: str, reference: str) -> bool:
    """True if ``candidate`` sorts strictly before ``reference`` (raises :class:`Incomparable`)."""
    return compare(candidate, reference) < 0
