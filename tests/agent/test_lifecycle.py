"""The release lifecycle on one host, end to end: hooks, health checks, automatic rollback and
migration checkpoints (docs/lifecycle.md).

Everything is real: packages built and signed by our builder, hooks run as subprocesses, HTTP
checks against aiohttp servers on 127.0.0.1, log files on disk. Set-up steps drive
:class:`agent.lifecycle.AppManager` in-process (fast); the operation a test is about runs through
the real ``cutover-agent --json`` subprocess wherever its exit code or JSON output is the contract.
Every rejection also asserts that nothing changed (``Host.snapshot``); every failure after the flip
asserts that ``current`` is back on the previous release.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from cutover.agent.config import load_config
from cutover.agent.errors import ActivationFailedError, ExitCode, StateError
from cutover.agent.lifecycle.manager import AppManager, OpResult
from tests.conftest import Host, PackageFactory

A, B, C = "1.0.0", "2.0.0", "3.0.0"

# Health policy for tests: fail fast (two rounds 50 ms apart), never wait long for a deadline.
FAST_POLICY: dict[str, Any] = {"interval_s": 0.05, "retries": 1, "healthy_deadline_s": 5.0}

# A hook line that appends "<label> CUTOVER_VERSION=... CUTOVER_PREVIOUS_VERSION=..." to a file in
# the shared dir (release dirs are read-only once staged; shared/ is where hooks may write).
MARK = (
    'echo "{label} CUTOVER_VERSION=$CUTOVER_VERSION '
    'CUTOVER_PREVIOUS_VERSION=$CUTOVER_PREVIOUS_VERSION" >> "$CUTOVER_SHARED_DIR/{file}"'
)


# ---------------------------------------------------------------------------------- helpers
def _toml(value: Any) -> str:
    """JSON scalars and lists of strings are valid TOML values."""
    return json.dumps(value)


def hook(phase: str, name: str, script: str, timeout_s: float = 10) -> str:
    """A ``[[hooks.PHASE]]`` table running ``sh -c SCRIPT``, for a package's cutover.toml."""
    return (
        f"[[hooks.{phase}]]\nname = {_toml(name)}\n"
        f"argv = {_toml(['sh', '-c', script])}\ntimeout_s = {timeout_s}\n"
    )


def health(phase: str, *checks: dict[str, Any], **policy: Any) -> str:
    """A ``[health.PHASE]`` table with the fast policy (overridable) and inline check tables."""
    items = {**FAST_POLICY, **policy}
    inline = ", ".join(
        "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in c.items()) + "}" for c in checks
    )
    body = "".join(f"{k} = {_toml(v)}\n" for k, v in items.items())
    return f"[health.{phase}]\n{body}checks = [{inline}]\n"


def mark(label: str, file: str = "marker") -> str:
    return MARK.format(label=label, file=file)


def configure(
    host: Host,
    *,
    keys: dict[str, Any] | None = None,
    hooks: dict[str, list[tuple[str, str]]] | None = None,
) -> None:
    """Add keys (checkpoint, restore, ...) and host-local hooks to ``[apps.demo]`` in agent.toml.

    ``init`` leaves ``[apps.demo]`` as the last table, so plain keys appended here land in it;
    call this once per test, before any operation that should see the change.
    """
    text = host.config.read_text()
    assert f"[apps.{host.app}]" in text and f"[[apps.{host.app}." not in text
    text += "".join(f"{k} = {_toml(v)}\n" for k, v in (keys or {}).items())
    for phase, entries in (hooks or {}).items():
        for name, script in entries:
            text += (
                f"[[apps.{host.app}.hooks.{phase}]]\nname = {_toml(name)}\n"
                f"argv = {_toml(['sh', '-c', script])}\ntimeout_s = 10\n"
            )
    host.config.write_text(text)


def manager(host: Host) -> AppManager:
    """An in-process AppManager on the host's current config (the one the CLI would build)."""
    cfg = load_config(host.config)
    return AppManager(host.app, cfg.apps[host.app], cfg.policies[host.app], actor="test")


def op(host: Host, name: str, *args: Any, **kw: Any) -> OpResult:
    """Run one lifecycle operation in-process, to completion."""
    method: Callable[..., Coroutine[Any, Any, OpResult]] = getattr(manager(host), name)
    return asyncio.run(method(*args, **kw))


def deploy(host: Host, package: Path, version: str) -> None:
    """Stage and activate a release in-process (set-up, not under test)."""
    op(host, "stage", package)
    op(host, "activate", version)
    assert host.current == f"releases/{version}"


def new_events(host: Host, since: int) -> list[str]:
    return [e["event"] for e in host.journal()[since:]]


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def shared(host: Host) -> Path:
    return host.root / "shared"


# ---------------------------------------------------------------------------------- HTTP server
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@pytest.fixture
def serve() -> Iterator[Callable[[Handler], str]]:
    """``serve(handler)`` runs a real aiohttp server on 127.0.0.1:0 in a background thread and
    returns its base URL. A thread, because the CLI under test is a blocking subprocess."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="test-http", daemon=True)
    thread.start()
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", handler)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        runners.append(runner)
        return f"http://127.0.0.1:{runner.addresses[0][1]}"

    def serve_(handler: Handler) -> str:
        return asyncio.run_coroutine_threadsafe(start(handler), loop).result(10)

    yield serve_
    for runner in runners:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()


def served_version(host: Host) -> str:
    """What a running app would report: VERSION read through ``current``, on every request."""
    return (host.root / "current" / "VERSION").read_text().strip()


# ---------------------------------------------------------------------------------- pre_activate
def test_failing_pre_activate_hook_changes_nothing_but_the_journal(
    host: Host, make_package: PackageFactory
) -> None:
    """pre_activate runs before the flip: when it fails, ``current``, the state file, releases/,
    incoming/ and trash/ are byte-for-byte unchanged; only a ``hooks.failed`` entry is journaled,
    the CLI exits 1 naming the hook, and no later step (post_activate) ran."""
    deploy(host, make_package(A), A)
    toml = hook("pre_activate", "warm-cache", 'echo "cannot warm cache" >&2; exit 3') + hook(
        "post_activate", "reload", mark("post_activate")
    )
    op(host, "stage", make_package(B, toml=toml))
    before, seq = host.snapshot(), len(host.journal())

    out = host.cli_json("activate", B, expect=ExitCode.FAILED)

    assert out["error"] == "hook_failed"
    assert "warm-cache" in out["message"] and "exit code 3" in out["message"]
    assert "cannot warm cache" in out["message"]
    assert host.snapshot() == before
    assert host.current == f"releases/{A}"
    assert new_events(host, seq) == ["hooks.failed"]
    failed = host.journal()[-1]
    assert failed["phase"] == "pre_activate" and failed["version"] == B
    assert host.state()["releases"][B]["status"] == "staged"  # not bad: it never went live
    assert not (shared(host) / "marker").exists()


# ---------------------------------------------------------------------------------- auto-revert
def test_failed_live_check_reverts_marks_bad_and_rollback_skips_it(
    host: Host, make_package: PackageFactory, serve: Callable[[Handler], str]
) -> None:
    """A → B → C all healthy; re-activating B, whose live HTTP check now gets 500, flips back to
    C automatically, runs C's post_rollback hooks then the host's, marks B ``bad`` and exits 7.
    B is still in the activation history, so only its ``bad`` mark keeps the next plain rollback
    from choosing it: that rollback goes from C to A. B can be neither activated nor rolled back
    to any more, and both refusals change nothing."""
    broken: set[str] = set()

    async def app_health(_: web.Request) -> web.Response:
        version = served_version(host)
        return web.Response(status=500 if version in broken else 200, text=version)

    url = serve(app_health)
    configure(host, hooks={"post_rollback": [("host-reload", mark("host post_rollback"))]})
    toml = hook("post_rollback", "release-reload", mark("release post_rollback")) + health(
        "live", {"type": "http", "url": f"{url}/health", "timeout_s": 2}
    )
    for v in (A, B, C):
        deploy(host, make_package(v, toml=toml), v)
    assert host.state()["history"] == [A, B, C]
    seq = len(host.journal())

    broken.add(B)
    out = host.cli_json("activate", B, expect=ExitCode.REVERTED)

    assert out["error"] == "reverted"
    assert "expected status 200, got 500" in out["message"]
    assert host.current == f"releases/{C}"
    state = host.state()
    assert state["current"] == C and state["pending"] is None
    assert state["releases"][B]["status"] == "bad"
    assert "activation failed" in state["releases"][B]["reason"]
    assert lines(shared(host) / "marker") == [
        f"release post_rollback CUTOVER_VERSION={C} CUTOVER_PREVIOUS_VERSION={B}",
        f"host post_rollback CUTOVER_VERSION={C} CUTOVER_PREVIOUS_VERSION={B}",
    ]
    events = new_events(host, seq)
    assert events.index("activate.intent") < events.index("activate.reverted")
    assert "activate.done" not in events
    reverted = next(e for e in host.journal()[seq:] if e["event"] == "activate.reverted")
    assert (reverted["version"], reverted["restored"]) == (B, C)
    intent = next(e for e in host.journal()[seq:] if e["event"] == "activate.intent")
    assert reverted["actor"] == intent["actor"] and intent["actor"].startswith("cli:")

    before = host.snapshot()
    refused = host.cli_json("rollback", "--to", B, expect=ExitCode.FAILED)
    assert "marked bad" in refused["message"]
    refused = host.cli_json("activate", B, expect=ExitCode.FAILED)
    assert "marked bad" in refused["message"]
    assert host.snapshot() == before

    out = host.cli_json("rollback")
    assert out["current"] == A and host.current == f"releases/{A}"


def _http_500_check(url: str) -> str:
    return health("live", {"type": "http", "url": f"{url}/health", "timeout_s": 2})


def _command_check(_: str) -> str:
    return health("live", {"type": "command", "argv": ["sh", "-c", "exit 1"]})


def _post_activate_fails(_: str) -> str:
    return hook("post_activate", "restart-workers", "echo workers died; exit 1")


# id: (cutover.toml of B given the 500-server URL, host-local post_activate script, reason)
FAILURES_AFTER_FLIP: dict[str, tuple[Callable[[str], str], str | None, str]] = {
    "live-http-500": (_http_500_check, None, "expected status 200, got 500"),
    "live-command-exit-1": (_command_check, None, "exit code 1"),
    "release-post-activate-hook-fails": (_post_activate_fails, None, "restart-workers"),
    "host-post-activate-hook-fails": (
        lambda _: "",
        f"[ $CUTOVER_VERSION != {B} ] || {{ echo 'php-fpm: reload failed' >&2; exit 1; }}",
        "php-fpm: reload failed",
    ),
}


@pytest.mark.parametrize(
    ("toml_for", "host_hook", "reason"),
    FAILURES_AFTER_FLIP.values(),
    ids=FAILURES_AFTER_FLIP.keys(),
)
def test_failure_after_the_flip_reverts_with_exit_7(
    host: Host,
    make_package: PackageFactory,
    serve: Callable[[Handler], str],
    toml_for: Callable[[str], str],
    host_hook: str | None,
    reason: str,
) -> None:
    """Whatever fails after the flip (a live HTTP or command check, the release's post_activate
    hook, the host's post_activate hook), the CLI exits 7, ``current`` is back on A and A is
    active again, B is ``bad`` (``failed``, retryable, when the host's hook failed: issue 9 item
    8), the host's post_rollback hook ran for A, no ``activate.done`` was journaled, and A still
    verifies clean. After C goes out, a plain rollback returns to A."""

    async def always_500(_: web.Request) -> web.Response:
        return web.Response(status=500, text="database unreachable")

    url = serve(always_500)
    host_hooks = {"post_rollback": [("host-reload", mark("post_rollback"))]}
    if host_hook is not None:
        host_hooks["post_activate"] = [("host-php-fpm", host_hook)]
    deploy(host, make_package(A), A)
    configure(host, hooks=host_hooks)
    op(host, "stage", make_package(B, toml=toml_for(url)))
    seq = len(host.journal())

    out = host.cli_json("activate", B, expect=ExitCode.REVERTED)

    assert out["error"] == "reverted" and reason in out["message"]
    assert host.current == f"releases/{A}"
    state = host.state()
    assert (state["current"], state["previous"], state["pending"]) == (A, None, None)
    assert state["releases"][A]["status"] == "active"
    assert state["releases"][B]["status"] == ("failed" if host_hook is not None else "bad")
    assert lines(shared(host) / "marker") == [
        f"post_rollback CUTOVER_VERSION={A} CUTOVER_PREVIOUS_VERSION={B}"
    ]
    events = new_events(host, seq)
    assert "activate.reverted" in events and "activate.done" not in events
    assert host.cli_json("verify")["drift"] == {A: []}

    deploy(host, make_package(C), C)  # the fixed release goes out; rolling back skips bad B
    assert op(host, "rollback").current == A


# ---------------------------------------------------------------------------------- hook contract
def test_hooks_get_cutover_env_and_run_in_the_release_dir(
    host: Host, make_package: PackageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every hook phase gets CUTOVER_APP/VERSION/PREVIOUS_VERSION/RELEASE_DIR/SHARED_DIR, a clean
    environment (nothing leaks from the agent's), and cwd = its release dir. Stage hooks run in
    releases/<v> before it is made read-only; the files they create are recorded, so ``verify``
    stays clean afterwards and they end up read-only like the rest of the release."""
    monkeypatch.setenv("AGENT_SECRET_CANARY", "must-not-leak")
    record = (
        '{ env; echo "CWD=$(pwd -P)"; } > "$CUTOVER_SHARED_DIR/env.$CUTOVER_PHASE.$CUTOVER_VERSION"'
    )
    toml = "".join(
        hook(phase, f"record-{phase}", record)
        for phase in ("stage", "pre_activate", "post_activate", "post_rollback")
    ) + hook("stage", "compile", "mkdir -p var/cache && echo compiled > var/cache/routes.php")
    deploy(host, make_package(A, toml=toml), A)
    deploy(host, make_package(B, toml=toml), B)
    op(host, "rollback")

    root = host.root.resolve()
    expected = {  # phase, version -> (previous, release dir)
        ("stage", B): (A, B),
        ("pre_activate", B): (A, B),
        ("post_activate", B): (A, B),
        ("post_rollback", A): (B, A),
    }
    for (phase, version), (previous, dir_version) in expected.items():
        env = dict(
            line.split("=", 1)
            for line in lines(shared(host) / f"env.{phase}.{version}")
            if "=" in line
        )
        release_dir = str(root / "releases" / dir_version)
        assert {k: v for k, v in env.items() if k.startswith("CUTOVER_")} == {
            "CUTOVER_APP": "demo",
            "CUTOVER_VERSION": version,
            "CUTOVER_PREVIOUS_VERSION": previous,
            "CUTOVER_RELEASE_DIR": release_dir,
            "CUTOVER_SHARED_DIR": str(root / "shared"),
            "CUTOVER_PHASE": phase,
        }, (phase, version)
        assert env["CWD"] == release_dir, (phase, version)
        assert "AGENT_SECRET_CANARY" not in env, (phase, version)

    compiled = root / "releases" / B / "var" / "cache" / "routes.php"
    assert compiled.read_text() == "compiled\n"
    assert compiled.stat().st_mode & 0o222 == 0
    out = host.cli_json("verify", B)
    assert out["ok"] is True and out["drift"] == {B: []}


def test_host_local_hooks_run_after_the_releases_own(
    host: Host, make_package: PackageFactory
) -> None:
    """apps.demo.hooks.post_activate / post_rollback from cutover.agent.toml run after the release's own
    hooks of the same step, on activation and on rollback, and both are journaled in that order."""
    configure(
        host,
        hooks={
            "post_activate": [("host-php-fpm", mark("host post_activate", "order"))],
            "post_rollback": [("host-php-fpm", mark("host post_rollback", "order"))],
        },
    )
    toml = hook("post_activate", "release-migrate", mark("release post_activate", "order")) + hook(
        "post_rollback", "release-reload", mark("release post_rollback", "order")
    )
    deploy(host, make_package(A, toml=toml), A)
    deploy(host, make_package(B, toml=toml), B)
    (shared(host) / "order").unlink()
    seq = len(host.journal())

    out = host.cli_json("activate", A)  # A is installed: activating it is a roll-forward to A
    assert out["current"] == A
    op(host, "activate", B)
    op(host, "rollback")

    assert lines(shared(host) / "order") == [
        f"release post_activate CUTOVER_VERSION={A} CUTOVER_PREVIOUS_VERSION={B}",
        f"host post_activate CUTOVER_VERSION={A} CUTOVER_PREVIOUS_VERSION={B}",
        f"release post_activate CUTOVER_VERSION={B} CUTOVER_PREVIOUS_VERSION={A}",
        f"host post_activate CUTOVER_VERSION={B} CUTOVER_PREVIOUS_VERSION={A}",
        f"release post_rollback CUTOVER_VERSION={A} CUTOVER_PREVIOUS_VERSION={B}",
        f"host post_rollback CUTOVER_VERSION={A} CUTOVER_PREVIOUS_VERSION={B}",
    ]
    done = [e for e in host.journal()[seq:] if e["event"] == "hooks.done"]
    assert [[r["name"] for r in e["results"]] for e in done] == [
        ["release-migrate", "host-php-fpm"],
        ["release-migrate", "host-php-fpm"],
        ["release-reload", "host-php-fpm"],
    ]


# ---------------------------------------------------------------------------------- migrations
MIGRATING = "[release]\nrequires_migration = true\n"
CHECKPOINT = (
    'echo checkpoint >> "$CUTOVER_SHARED_DIR/order"; echo "pg_dump: 12 tables"; echo dump-ref-123'
)
RESTORE = 'echo "$CUTOVER_CHECKPOINT_REF $CUTOVER_VERSION" > "$CUTOVER_SHARED_DIR/restored"'


def migrating_release(make_package: PackageFactory, version: str = B) -> Path:
    return make_package(
        version,
        toml=MIGRATING
        + hook("pre_activate", "pre", 'echo pre_activate >> "$CUTOVER_SHARED_DIR/order"')
        + hook("post_activate", "migrate", 'echo post_activate >> "$CUTOVER_SHARED_DIR/order"'),
    )


@pytest.mark.parametrize(
    ("checkpoint", "message"),
    [
        (None, "no checkpoint command is configured"),
        (["sh", "-c", "echo 'pg_dump: disk full' >&2; exit 4"], "pg_dump: disk full"),
    ],
    ids=["no-checkpoint-configured", "checkpoint-command-fails"],
)
def test_migrating_release_is_refused_without_a_checkpoint(
    host: Host, make_package: PackageFactory, checkpoint: list[str] | None, message: str
) -> None:
    """A release with requires_migration is not activated unless the host's checkpoint command
    succeeded first: with none configured, or a failing one, the CLI exits 1 with a message that
    says why, no pre_activate hook ran, and ``current`` and the state are unchanged."""
    if checkpoint is not None:
        configure(host, keys={"checkpoint": checkpoint})
    deploy(host, make_package(A), A)
    op(host, "stage", migrating_release(make_package))
    before = host.snapshot()

    out = host.cli_json("activate", B, expect=ExitCode.FAILED)

    assert message in out["message"] and "checkpoint" in out["message"]
    assert host.snapshot() == before
    assert host.state()["releases"][B]["checkpoint_ref"] is None
    assert not (shared(host) / "order").exists()  # neither pre_activate nor post_activate ran


def test_checkpoint_runs_first_and_its_reference_is_recorded(
    host: Host, make_package: PackageFactory
) -> None:
    """With ``checkpoint`` configured, activating a migrating release runs it before pre_activate,
    records the last line of its output as ``checkpoint_ref`` on the release and in the journal."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT]})
    deploy(host, make_package(A), A)
    op(host, "stage", migrating_release(make_package))

    out = host.cli_json("activate", B)

    assert out["current"] == B and host.current == f"releases/{B}"
    assert host.state()["releases"][B]["checkpoint_ref"] == "dump-ref-123"
    assert lines(shared(host) / "order") == ["checkpoint", "pre_activate", "post_activate"]
    done = [e for e in host.journal() if e["event"] == "checkpoint.done"]
    assert [(e["version"], e["ref"]) for e in done] == [(B, "dump-ref-123")]


@pytest.fixture
def migrated(host: Host, make_package: PackageFactory) -> Host:
    """A active, then B (requires_migration) activated after checkpoint ``dump-ref-123``; a
    ``restore`` command is configured that writes what it got to shared/restored."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT], "restore": ["sh", "-c", RESTORE]})
    deploy(host, make_package(A), A)
    deploy(host, migrating_release(make_package), B)
    return host


def test_rollback_from_a_migrating_release_warns_database_not_restored(migrated: Host) -> None:
    """A plain rollback across a release that migrated the database flips back, but warns (CLI
    JSON ``warnings``) and journals that the database was NOT restored; restore does not run."""
    host = migrated

    out = host.cli_json("rollback")

    assert out["current"] == A and host.current == f"releases/{A}"
    assert any("database was NOT restored" in w for w in out["warnings"]), out["warnings"]
    assert any("dump-ref-123" in w for w in out["warnings"])
    assert not (shared(host) / "restored").exists()
    done = [e for e in host.journal() if e["event"] == "rollback.done"]
    assert done[-1]["database_restored"] is False
    assert any(e["event"] == "rollback.warnings" for e in host.journal())


def test_rollback_restore_runs_the_restore_command_with_the_checkpoint_ref(migrated: Host) -> None:
    """``rollback --restore`` runs the configured restore command (CUTOVER_CHECKPOINT_REF set to
    the recorded checkpoint, CUTOVER_VERSION to the target) and records that it did."""
    host = migrated

    out = host.cli_json("rollback", "--restore")

    assert out["current"] == A and host.current == f"releases/{A}"
    assert lines(shared(host) / "restored") == [f"dump-ref-123 {A}"]
    assert not any("NOT restored" in w for w in out["warnings"])
    assert any("restored from checkpoint 'dump-ref-123'" in w for w in out["warnings"])
    done = [e for e in host.journal() if e["event"] == "rollback.done"]
    assert done[-1]["database_restored"] is True


def test_rollback_restore_without_a_restore_command_is_refused(
    host: Host, make_package: PackageFactory
) -> None:
    """``rollback --restore`` with no ``restore`` configured is refused before the flip: exit 1,
    a message naming the missing setting, and nothing changed."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT]})
    deploy(host, make_package(A), A)
    deploy(host, migrating_release(make_package), B)
    before = host.snapshot()

    out = host.cli_json("rollback", "--restore", expect=ExitCode.FAILED)

    assert "restore" in out["message"] and f"apps.{host.app}.restore" in out["message"]
    assert host.snapshot() == before


def test_rollback_across_an_older_migrating_release_warns(
    host: Host, make_package: PackageFactory
) -> None:
    """A → B (migrates the database) → C → ``rollback --to A`` crosses B's migration: the database
    still has B's schema, so the rollback must warn that it was not restored (the design brief: "A
    rollback across such a release warns"), even though C itself did not migrate."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT]})
    deploy(host, make_package(A), A)
    deploy(host, migrating_release(make_package), B)
    deploy(host, make_package(C), C)

    out = host.cli_json("rollback", "--to", A)

    assert out["current"] == A
    assert any("database was NOT restored" in w for w in out.get("warnings", [])), out


# ---------------------------------------------------------------------------------- staged checks
@pytest.mark.parametrize(
    ("argv", "staged"),
    [
        (["sh", "-c", "test -f index.html && test -x bin/console"], True),
        (["sh", "-c", "echo 'config cache is stale' >&2; exit 2"], False),
    ],
    ids=["staged-check-passes", "staged-check-fails"],
)
def test_staged_health_checks_gate_staging(
    host: Host, make_package: PackageFactory, argv: list[str], staged: bool
) -> None:
    """Staged checks run in the staged release dir before it is recorded: passing ones record the
    release as staged; a failing one fails staging (exit 1) and leaves nothing installed —
    releases/, incoming/, trash/ and ``current`` unchanged, the release recorded as ``failed``."""
    deploy(host, make_package(A), A)
    package = make_package(B, toml=health("staged", {"type": "command", "argv": argv}))
    before = host.snapshot()

    proc = host.cli("stage", str(package))

    after = host.snapshot()
    record = host.state()["releases"][B]
    if staged:
        assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
        assert record["status"] == "staged" and record["installed"] is True
        assert record["health"][-1]["status"] == "pass"
        assert after["releases"] == sorted([A, B])
    else:
        assert proc.returncode == ExitCode.FAILED, proc.stdout + proc.stderr
        assert "config cache is stale" in json.loads(proc.stdout)["message"]
        assert (record["status"], record["installed"]) == ("failed", False)
        assert "stage.failed" in [e["event"] for e in host.journal()]
        for key in ("current", "releases", "incoming", "trash"):
            assert after[key] == before[key], key
        assert not (host.root / "releases" / B).exists()


# ---------------------------------------------------------------------------------- log check
@pytest.mark.parametrize(
    ("appended", "reverted"),
    [
        ("[2026-03-07 12:00:01] production.ERROR: PHP Fatal error: Class not found", True),
        ("[2026-03-07 12:00:01] production.INFO: worker started", False),
    ],
    ids=["matching-line-after-flip-reverts", "benign-line-after-flip-activates"],
)
def test_log_check_sees_only_lines_written_after_the_flip(
    host: Host, make_package: PackageFactory, appended: str, reverted: bool
) -> None:
    """A live ``log`` check fails the activation (exit 7, reverted) when a post_activate hook
    appends a matching line to the shared log after the flip; a matching line that was already
    in the file before the flip does not count, so a benign new line activates."""
    toml = (
        '[shared]\ndirs = ["storage"]\n'
        + hook("post_activate", "boot", f'echo "{appended}" >> storage/logs/laravel.log')
        + health(
            "live", {"type": "log", "path": "storage/logs/laravel.log", "pattern": "Fatal error"}
        )
    )
    deploy(host, make_package(A), A)
    op(host, "stage", make_package(B, toml=toml))
    log_file = shared(host) / "storage" / "logs" / "laravel.log"
    log_file.parent.mkdir(parents=True)
    log_file.write_text("[2026-03-06 09:00:00] production.ERROR: PHP Fatal error: old news\n")

    proc = host.cli("activate", B)

    assert lines(log_file)[-1] == appended  # the hook really wrote through the shared link
    if reverted:
        assert proc.returncode == ExitCode.REVERTED, proc.stdout + proc.stderr
        assert "Class not found" in json.loads(proc.stdout)["message"]
        assert host.current == f"releases/{A}"
        assert host.state()["releases"][B]["status"] == "bad"
    else:
        assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
        assert host.current == f"releases/{B}"
        assert host.state()["releases"][B]["status"] == "active"


# ---------------------------------------------------------------------------------- version probe
@pytest.mark.parametrize(
    "app_reloads", [True, False], ids=["app-serves-new-release", "app-stuck-on-old-release"]
)
def test_version_probe_confirms_the_running_app_serves_the_new_release(
    host: Host,
    make_package: PackageFactory,
    serve: Callable[[Handler], str],
    app_reloads: bool,
) -> None:
    """After the flip the agent polls the version probe: an app that reads VERSION through
    ``current`` on every request reports B and the activation commits; an app that keeps serving
    the version it started with (a worker nobody restarted) fails the probe, and B is reverted."""
    started_with: list[str] = []

    async def version(_: web.Request) -> web.Response:
        if not started_with or app_reloads:
            started_with[:] = [served_version(host)]
        return web.json_response({"app": "demo", "version": started_with[0]})

    deploy(host, make_package(A), A)
    url = serve(version)
    # The probe passes as soon as B is served: a generous deadline for a loaded machine there;
    # a short one where it must expire (the stale app never reports B).
    deadline_s = 60 if app_reloads else 1.5
    probe = (
        f'[health.version_probe]\nurl = "{url}/version"\ntimeout_s = 1\ndeadline_s = {deadline_s}\n'
    )
    op(host, "stage", make_package(B, toml=probe))
    assert asyncio.run(_get(url + "/version"))["version"] == A  # the app runs A before the flip

    proc = host.cli("activate", B)

    if app_reloads:
        assert proc.returncode == ExitCode.OK, proc.stdout + proc.stderr
        assert host.current == f"releases/{B}"
        live = host.state()["releases"][B]["health"][-1]
        assert live["version_probe"]["status"] == "pass"
    else:
        assert proc.returncode == ExitCode.REVERTED, proc.stdout + proc.stderr
        message = json.loads(proc.stdout)["message"]
        assert "did not report version" in message and B in message
        assert host.current == f"releases/{A}"
        assert host.state()["releases"][B]["status"] == "bad"


async def _get(url: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        data: dict[str, Any] = await resp.json()
        return data


# ---------------------------------------------------------------------------------- in-process API
def test_in_process_activation_failure_raises_activation_failed(
    host: Host, make_package: PackageFactory
) -> None:
    """The daemon's path (AppManager in-process) raises ActivationFailedError (exit code 7) for a
    failure after the flip and StateError for a refused migration — the same outcomes as the CLI."""
    deploy(host, make_package(A), A)
    op(host, "stage", make_package(B, toml=hook("post_activate", "boom", "exit 9")))
    op(host, "stage", migrating_release(make_package, C))

    with pytest.raises(ActivationFailedError) as reverted:
        op(host, "activate", B)
    assert reverted.value.exit_code == ExitCode.REVERTED and "exit code 9" in str(reverted.value)
    with pytest.raises(StateError, match="requires a migration"):
        op(host, "activate", C)
    assert host.current == f"releases/{A}"


def test_an_unsafe_database_rollback_is_made_safe_by_restore(
    host: Host, make_package: PackageFactory
) -> None:
    """A migrating release whose rollback plan says the database rollback is ``unsafe``: a plain
    rollback is refused (nothing changed) and its advice names --restore, because a checkpoint
    exists; ``--restore`` restores from it and rolls back without --accept-db-risk."""
    configure(host, keys={"checkpoint": ["sh", "-c", CHECKPOINT], "restore": ["sh", "-c", RESTORE]})
    deploy(host, make_package(A), A)
    deploy(host, make_package(B, toml=MIGRATING + '[rollback]\ndatabase = "unsafe"\n'), B)
    before = host.snapshot()

    out = host.cli_json("rollback", expect=ExitCode.FAILED)

    assert out["error"] == "invalid_state" and f"{B} (unsafe)" in out["message"]
    assert "--restore" in out["message"] and "--accept-db-risk" in out["message"]
    assert host.snapshot() == before
    out = host.cli_json("rollback", "--restore")
    assert out["current"] == A and lines(shared(host) / "restored") == [f"dump-ref-123 {A}"]
    assert not any(e["event"] == "rollback.db_risk_accepted" for e in host.journal())


def test_first_activation_is_kept_and_how_current_left_a_release_is_recorded(
    host: Host, make_package: PackageFactory
) -> None:
    """``first_activated_at`` is never overwritten by a later activation; ``left_by`` says whether
    an activation or a rollback took ``current`` away from a release (the fleet's release log)."""
    deploy(host, make_package(A), A)
    deploy(host, make_package(B), B)
    state = host.state()
    assert state["releases"][B]["first_activated_at"] == state["releases"][B]["activated_at"]
    assert state["releases"][A]["left_by"] == "activate"
    # as if B was first activated long ago: a later activation must keep that date
    long_ago = "2000-01-01T00:00:00Z"
    state["releases"][B]["first_activated_at"] = long_ago
    (host.root / ".cutover" / "state.json").write_text(json.dumps(state))

    host.cli_json("rollback")
    assert host.state()["releases"][B]["left_by"] == "rollback"
    host.cli_json("activate", B)

    releases = host.state()["releases"]
    assert releases[B]["first_activated_at"] == long_ago != releases[B]["activated_at"]
    assert releases[A]["left_by"] == "activate"
