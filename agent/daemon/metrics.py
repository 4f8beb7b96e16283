"""Prometheus metrics of one agent (served at ``GET /metrics``, text exposition format).

Every metric lives in the agent's own :class:`prometheus_client.CollectorRegistry` (never the
process-global default), so tests and embedders can create several agents in one process.

Label values come only from the agent's config (app names), fixed sets in the code (operation
kinds, hook phases, reason codes, route templates) or installed release versions; nothing a
request sends verbatim ends up in a label, so an unauthenticated client cannot grow the
cardinality. Nothing secret is exported: no key material, no paths, no hook output.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from cutover.agent import __version__
from cutover.agent.host.state import AppState, ReleaseStatus

# prometheus_client adds a ``<name>_created`` gauge beside every counter and histogram: a second
# series per label set that nobody graphs and that doubles the series count (issue 9). The switch
# is process-wide; the agent owns its process.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

__all__ = ["CONTENT_TYPE", "AppReleases", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST

_KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


@dataclass(frozen=True)
class AppReleases:
    """What ``cutover_app_release_info`` reports for one app."""

    current: str | None
    previous: str | None
    staged: tuple[str, ...] = ()
    installed: int = 0
    last_deployed: float | None = None  # Unix time of the newest committed activation

    @classmethod
    def of(cls, state: AppState) -> AppReleases:
        """The snapshot of one app's state. ``activated_at`` is written only when an activation
        commits, so a reverted deploy never counts as the last successful one."""
        stamps = [r.activated_at for r in state.releases.values() if r.activated_at]
        installed = state.installed()
        return cls(
            state.current,
            state.previous,
            tuple(r.version for r in installed if r.status == ReleaseStatus.STAGED),
            len(installed),
            max(datetime.fromisoformat(s).timestamp() for s in stamps) if stamps else None,
        )


class _ReleaseCollector(Collector):
    """Current/previous/staged versions per app, from a snapshot the server refreshes."""

    def __init__(self) -> None:
        self.apps: dict[str, AppReleases] = {}

    def collect(self) -> Iterable[Metric]:
        info = GaugeMetricFamily(
            "cutover_app_release_info",
            "1 for each release of each app by role (current, previous, staged).",
            labels=["app", "version", "role"],
        )
        installed = GaugeMetricFamily(
            "cutover_app_releases_installed",
            "Releases installed under releases/ per app.",
            labels=["app"],
        )
        deployed = GaugeMetricFamily(
            "cutover_app_last_successful_deploy_timestamp_seconds",
            "When an activation of the app last committed (Unix time; absent if never).",
            labels=["app"],
        )
        for app, rel in sorted(self.apps.items()):
            if rel.last_deployed is not None:
                deployed.add_metric([app], rel.last_deployed)
            if rel.current:
                info.add_metric([app, rel.current, "current"], 1)
            if rel.previous:
                info.add_metric([app, rel.previous, "previous"], 1)
            for version in rel.staged:
                info.add_metric([app, version, "staged"], 1)
            installed.add_metric([app], rel.installed)
        yield info
        yield installed
        yield deployed


class Metrics:
    """The agent's metrics; attributes are the prometheus_client instruments."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.info = Gauge("cutover_agent_info", "Agent build information.", ["version"], registry=r)
        self.info.labels(__version__).set(1)
        self.requests = Counter(
            "cutover_http_requests_total",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "cutover_http_request_duration_seconds",
            "Time to answer a request (streamed bodies included).",
            ["route"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10, 60, 600),
            registry=r,
        )
        self.auth_failures = Counter(
            "cutover_auth_failures_total",
            "Requests refused by authentication, by reason code.",
            ["reason"],
            registry=r,
        )
        self.operations = Counter(
            "cutover_operations_total",
            "Finished operations by kind, app and result (succeeded, failed, cancelled).",
            ["op", "app", "result"],
            registry=r,
        )
        self.operation_seconds = Histogram(
            "cutover_operation_duration_seconds",
            "Duration of finished operations.",
            ["op", "app"],
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.operations_running = Gauge(
            "cutover_operations_running", "Operations in progress.", registry=r
        )
        self.hooks = Counter(
            "cutover_hook_phases_total",
            "Hook phases run, by app, phase and result (pass, fail, cancelled).",
            ["app", "phase", "result"],
            registry=r,
        )
        self.health_checks = Counter(
            "cutover_health_check_results_total",
            "Individual health check attempts by app, phase (staged, live) and status.",
            ["app", "phase", "status"],
            registry=r,
        )
        self.health_phases = Counter(
            "cutover_health_phase_results_total",
            "Health phases by app, phase and final status (pass, fail, inconclusive).",
            ["app", "phase", "status"],
            registry=r,
        )
        self.received_bytes = Counter(
            "cutover_package_bytes_received_total",
            "Package bytes received, by source (upload, fetch).",
            ["source"],
            registry=r,
        )
        self.upload_resumes = Counter(
            "cutover_upload_resumes_total",
            "Resumed uploads (PUT with ?sha256=&offset=N, N > 0) by app and result (accepted: "
            "appended to the held bytes; refused: 409 upload_offset).",
            ["app", "result"],
            registry=r,
        )
        self.partials_removed = Counter(
            "cutover_upload_partials_removed_total",
            "Kept partial uploads removed from <state_dir>/resume, by app and reason (expired, "
            "over_limit, disk: dropped to make room for a stage of that app).",
            ["app", "reason"],
            registry=r,
        )
        self.disk_prunes = Counter(
            "cutover_disk_prunes_total",
            "Releases pruned by retention by disk (min_free_bytes / min_free_pct), by app.",
            ["app"],
            registry=r,
        )
        self.config_reloads = Counter(
            "cutover_config_reloads_total",
            "Config reload attempts by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.config_loaded = Gauge(
            "cutover_config_loaded_timestamp_seconds",
            "When the config in force was loaded (Unix time).",
            registry=r,
        )
        self.connections_open = Gauge(
            "cutover_connections_open", "Client connections open now.", registry=r
        )
        self.connections_closed = Counter(
            "cutover_connections_closed_total",
            "Connections closed or refused by the agent's limits, by reason (header_timeout, "
            "idle_timeout, body_timeout, peer_cap, total_cap, evicted, accept_failed).",
            ["reason"],
            registry=r,
        )
        self.releases = _ReleaseCollector()
        r.register(self.releases)
        # process_* (CPU, memory, fds, start time), python_info and python_gc_*: the collectors
        # prometheus_client registers by default, added to the agent's own registry.
        for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(collector)

    # ------------------------------------------------------------------ helpers
    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        """Count one answered request."""
        m = method if method in _KNOWN_METHODS else "OTHER"
        self.requests.labels(m, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def auth_failure(self, reason: str) -> None:
        self.auth_failures.labels(reason).inc()

    def upload_resume(self, app: str, result: str) -> None:
        self.upload_resumes.labels(app, result).inc()

    def partial_removed(self, app: str, reason: str) -> None:
        self.partials_removed.labels(app, reason).inc()

    def disk_pruned(self, app: str, versions: list[str]) -> None:
        self.disk_prunes.labels(app).inc(len(versions))

    def set_app(self, app: str, releases: AppReleases | None) -> None:
        """Replace the release snapshot of ``app`` (None: forget the app)."""
        if releases is None:
            self.releases.apps.pop(app, None)
        else:
            self.releases.apps[app] = releases

    def render(self) -> bytes:
        """The text exposition of every metric."""
        return generate_latest(self.registry)
