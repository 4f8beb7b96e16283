"""No secrets in release notes: scan a manifest's human-written fields before it is built.

The notes, the structured notes, the rollback plan, the checklist, the owner, branch and build
id are published with every release (``cutover notes``, the hosts' journals), so a private key,
a cloud access key, a token or a password in a URL there is a leak. Detection is delegated to
``detect-secrets`` (Yelp), a maintained library, rather than our own regexes. Its entropy and
keyword detectors are left out: on prose and commit hashes they flag nearly everything, and a
build that always fails teaches people to skip the check. The file list and hooks are not
scanned (they are code, not notes).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from detect_secrets.core.plugins.util import get_mapping_from_secret_type_to_class
from detect_secrets.settings import get_plugins, transient_settings

from cutover.agent.errors import ManifestError
from cutover.agent.package.manifest import Manifest

__all__ = ["SCANNED_FIELDS", "check_no_secrets", "find_secrets"]

SCANNED_FIELDS = ("notes", "release_notes", "rollback", "checklist", "owner", "branch", "build")
_NOISY = {"Base64HighEntropyString", "HexHighEntropyString", "KeywordDetector"}


def _strings(value: Any, where: str) -> Iterator[tuple[str, str]]:
    if isinstance(value, str):
        yield where, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(v, f"{where}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _strings(v, f"{where}[{i}]")


def find_secrets(manifest: Manifest) -> list[tuple[str, str]]:
    """(field, kind of secret) for every secret found, e.g. ``("release_notes.changes[1]",
    "AWS Access Key")``. The secret itself is never returned."""
    data = manifest.model_dump(mode="json", include=set(SCANNED_FIELDS))
    classes: list[type] = list(get_mapping_from_secret_type_to_class().values())
    names = sorted(c.__name__ for c in classes if c.__name__ not in _NOISY)
    found: list[tuple[str, str]] = []
    with transient_settings({"plugins_used": [{"name": n} for n in names]}):
        plugins = get_plugins()
        for field, text in _strings(data, ""):
            for n, line in enumerate(text.splitlines(), 1):
                kinds = {
                    s.type
                    for p in plugins
                    for s in p.analyze_line(filename=field, line=line, line_number=n)
                }
                found.extend((field.lstrip("."), kind) for kind in sorted(kinds))
    return found


def check_no_secrets(manifest: Manifest) -> None:
    """Raises :class:`ManifestError` (code ``secret_in_notes``) naming each offending field."""
    found = find_secrets(manifest)
    if found:
        where = ", ".join(f"{field} ({kind})" for field, kind in found)
        raise ManifestError(
            f"{manifest.app} {manifest.version}: release notes or metadata contain what looks "
            f"like a secret: {where}. Remove it from cutover.toml or the --notes text, rotate "
            "it if it was ever pushed, and build again",
            code="secret_in_notes",
        )
