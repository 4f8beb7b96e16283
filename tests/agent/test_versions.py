"""Version names and their documented ordering (agent/versions.py): PEP 440 first (which covers
CalVer), SemVer when both are SemVer but not both PEP 440, otherwise incomparable."""

from __future__ import annotations

import pytest

from cutover.agent.errors import ManifestError
from cutover.agent.versions import Incomparable, compare, is_older, validate_version


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1.2.3", "1.10.0"),
        ("1.0.0rc1", "1.0.0"),
        ("1.0.0-rc.1", "1.0.0"),  # PEP 440 reads SemVer-style pre-releases too
        ("1.0.0", "1.0.0.post1"),
        ("2026.03.7", "2026.3.10"),  # CalVer: numeric, not lexicographic
        ("2026.3.9", "2026.03.10"),
        ("2025.12.31", "2026.1.1"),
        ("1.0.0-beta.2", "1.0.0-beta.11"),
        ("1.0.0-alpha.1", "1.0.0-alpha.beta"),  # SemVer only: numeric < alphanumeric
        ("1.0.0-alpha.beta", "1.0.0-beta"),
        ("1.0.0-alpha.beta", "1.0.0"),  # a release sorts after its pre-releases
        ("1.0.0-x.7.z.92", "1.0.0-x.7.z.100"),
    ],
    ids=lambda v: v,
)
def test_ordering(older: str, newer: str) -> None:
    assert compare(older, newer) == -1
    assert compare(newer, older) == 1
    assert is_older(older, newer) and not is_older(newer, older)


@pytest.mark.parametrize(
    ("a", "b"), [("2026.03.7", "2026.3.7"), ("1.0", "1.0.0"), ("1.0.0-x.1", "1.0.0-x.1+build.9")]
)
def test_equal_sorting_versions_are_not_older(a: str, b: str) -> None:
    assert compare(a, b) == 0
    assert not is_older(a, b) and not is_older(b, a)


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("release-abc", "1.0.0"),
        ("2026.03.7", "1.0.0-alpha.beta"),  # CalVer (not SemVer) vs SemVer-only
        ("main-2026-03-07", "main-2026-03-08"),
    ],
)
def test_incomparable_schemes_raise(a: str, b: str) -> None:
    with pytest.raises(Incomparable) as info:
        compare(a, b)
    assert a in str(info.value) and b in str(info.value)
    with pytest.raises(Incomparable):
        is_older(b, a)


@pytest.mark.parametrize("name", ["1.0.0", "2026.03.7", "v2", "1.0.0-rc.1+build.5", "A" * 128])
def test_valid_names(name: str) -> None:
    assert validate_version(name) == name


@pytest.mark.parametrize(
    "name",
    ["", "../1.0", "1.0/evil", " 1.0", "1.0 ", ".hidden", "-1", "1.0\n", "A" * 129, "1.0;rm"],
    ids=repr,
)
def test_unsafe_names_are_refused(name: str) -> None:
    with pytest.raises(ManifestError) as info:
        validate_version(name)
    assert "invalid version" in str(info.value)
