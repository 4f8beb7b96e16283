"""Fields a release must declare, by release type: the host's demand on the manifest (pure).

Rules (docs/governance.md, "Required fields"):

1. Per app, the agent config lists dotted manifest fields that must be present, for every
   release (``all``), for a release type (``security = ["release_notes.security_impact"]``), and
   for a release that ``requires_migration`` (``migration = ["rollback.database"]``).
2. A field is present when it is set and not empty. A ``checklist.ITEM`` is present only when
   the item is ``true`` or a non-empty string: ``tests_passed = false`` is a missing item.
3. ``cutover build --require FILE`` applies the same rules before a package exists, and the
   agent applies them again at stage, because CI cannot be trusted to have checked.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from cutover.agent.errors import ManifestError
from cutover.agent.package.manifest import Manifest, ReleaseType

__all__ = ["Requirements", "check_requirements", "missing_fields"]

_Fields = list[str]


class Requirements(BaseModel):
    """``[apps.NAME.require]``: e.g. ``all = ["owner", "checklist.tests_passed"]``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    all: _Fields = []
    migration: _Fields = []
    major: _Fields = []
    minor: _Fields = []
    patch: _Fields = []
    hotfix: _Fields = []
    security: _Fields = []
    infrastructure: _Fields = Field(default=[])

    def for_manifest(self, manifest: Manifest) -> list[str]:
        fields: list[str] = [*self.all, *getattr(self, ReleaseType(manifest.release_type).value)]
        if manifest.requires_migration:
            fields += self.migration
        return list(dict.fromkeys(fields))


def _present(value: Any) -> bool:
    return value is not None and value is not False and value not in ("", [], {})


def _lookup(data: Any, path: str) -> Any:
    for part in path.split("."):
        if not isinstance(data, dict) or part not in data:
            return None
        data = data[part]
    return data


def missing_fields(manifest: Manifest, requirements: Requirements) -> list[str]:
    """The required fields ``manifest`` does not declare (rule 2), in the order required."""
    data = manifest.model_dump(mode="json", exclude={"files"})
    return [f for f in requirements.for_manifest(manifest) if not _present(_lookup(data, f))]


def check_requirements(manifest: Manifest, requirements: Requirements) -> None:
    """Raises :class:`ManifestError` (code ``missing_field``) naming every missing field."""
    missing = missing_fields(manifest, requirements)
    if missing:
        raise ManifestError(
            f"{manifest.app} {manifest.version} ({manifest.release_type.value}"
            f"{', migrating' if manifest.requires_migration else ''}) lacks required "
            f"field(s): {', '.join(missing)}; declare them in cutover.toml (owner, [rollback], "
            "[notes], [checklist]) and rebuild",
            code="missing_field",
        )
