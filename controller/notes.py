"""Release notes in the release process's template, built from a signed manifest.

``cutover notes PACKAGE [--format md|json]``. The sections, in order (docs/governance.md):
version and date, summary, changes, impacted areas, database changes with rollback safety,
security impact, testing completed, deployment notes (owner, time, rollback owner, approver,
verification), known issues. The notes come only from the manifest (signed), never from the tree,
so what is printed is what the hosts verify. An empty section says "none" rather than vanishing:
a reviewer sees that it was left empty.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any

from cutover.agent.errors import ConfigError
from cutover.agent.package.manifest import Manifest, ReleaseNotes, RollbackPlan, SecurityImpact

__all__ = ["changes_from_git", "notes_json", "notes_markdown"]


def changes_from_git(repo: Path, revision_range: str) -> list[str]:
    """The subjects of the commits in ``revision_range`` (``git log``), oldest first, merges
    left out: the ``changes`` of ``cutover build --changes-from-git RANGE``.

    Raises:
        ConfigError: git is missing, ``repo`` is not a git work tree, or the range is unknown.
    """
    if revision_range.startswith("-"):
        raise ConfigError(f"--changes-from-git {revision_range!r}: a range such as v1.3.0..HEAD")
    try:
        proc = subprocess.run(
            [
                "git",
                "-C",
                str(repo),
                "log",
                "--no-merges",
                "--reverse",
                "--format=%s",
                revision_range,
                "--",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ConfigError(f"--changes-from-git: cannot run git: {exc}") from exc
    if proc.returncode != 0:
        raise ConfigError(
            f"--changes-from-git {revision_range!r} in {repo}: "
            f"{proc.stderr.strip() or 'git log failed'}; give a range such as v1.3.0..HEAD"
        )
    return [line for line in proc.stdout.splitlines() if line.strip()]


def notes_json(manifest: Manifest) -> dict[str, Any]:
    """The template's sections as data (the ``--format json`` document)."""
    notes = manifest.release_notes or ReleaseNotes()
    plan = manifest.rollback or RollbackPlan()
    sec = notes.security_impact or SecurityImpact()
    return {
        "app": manifest.app,
        "version": manifest.version,
        "date": manifest.created_at.date().isoformat(),
        "release_type": manifest.release_type.value,
        "summary": notes.summary or manifest.notes,
        "changes": list(notes.changes),
        "impacted_areas": list(notes.impacted_areas),
        "database": {
            "requires_migration": manifest.requires_migration,
            "destructive": bool(manifest.destructive_migration),
            "migrations": list(notes.migrations),
            "rollback": plan.database,
        },
        "security_impact": sec.model_dump(),
        "tests_completed": list(notes.tests_completed),
        "deployment": {
            "owner": manifest.owner,
            "created_at": manifest.created_at.isoformat(),
            "branch": manifest.branch,
            "commit": manifest.commit,
            "rollback_owner": plan.owner,
            "approver": plan.approver,
            "verification": list(plan.verification),
            "config_rollback": plan.config,
            "files_rollback": plan.files,
        },
        "operational_risks": list(notes.operational_risks),
        "checklist": dict(manifest.checklist or {}),
        "known_issues": list(notes.known_issues),
    }


def _items(values: list[str]) -> list[str]:
    return [f"- {v}" for v in values] or ["- none"]


def notes_markdown(manifest: Manifest) -> str:
    """The template rendered as Markdown (the ``--format md`` output)."""
    d = notes_json(manifest)
    db, sec, dep = d["database"], d["security_impact"], d["deployment"]
    checklist = [
        f"- {k}: {'yes' if v is True else 'NO' if v is False else v}"
        for k, v in sorted(d["checklist"].items())
    ]
    lines = [
        f"# {d['app']} {d['version']} ({d['release_type']}), {d['date']}",
        "",
        "## Summary",
        d["summary"] or "none",
        "",
        "## Changes",
        *_items(d["changes"]),
        "",
        "## Impacted areas",
        *_items(d["impacted_areas"]),
        "",
        "## Database changes",
        f"- migration: {'yes' if db['requires_migration'] else 'no'}"
        + (" (destructive)" if db["destructive"] else ""),
        *[f"- {m}" for m in db["migrations"]],
        f"- rollback safety: {db['rollback'] or 'not declared'}",
        "",
        "## Security impact",
        f"- RBAC: {sec['rbac'] or 'none'}",
        f"- tenant isolation: {sec['tenant_isolation'] or 'none'}",
        f"- sensitive data: {sec['sensitive_data'] or 'none'}",
        "",
        "## Testing completed",
        *_items(d["tests_completed"]),
        *checklist,
        "",
        "## Deployment notes",
        f"- owner: {dep['owner'] or 'not declared'}",
        f"- built: {dep['created_at']} from {dep['branch'] or '-'} {dep['commit'] or ''}".rstrip(),
        f"- rollback owner: {dep['rollback_owner'] or 'not declared'}",
        f"- approver: {dep['approver'] or 'not declared'}",
        *[f"- verify: {v}" for v in dep["verification"]],
        *[f"- risk: {r}" for r in d["operational_risks"]],
        "",
        "## Known issues",
        *_items(d["known_issues"]),
    ]
    return "\n".join(lines) + "\n"
