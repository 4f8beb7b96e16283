"""The agent's /metrics exposition, rendered in-process from a real host's state (issue 9,
item 18): no duplicate ``_created`` series, process metrics, and a last-successful-deploy
timestamp per app that survives a failed deploy."""

from __future__ import annotations

from datetime import datetime

import pytest
from prometheus_client.parser import text_string_to_metric_families

from cutover.agent.daemon.metrics import AppReleases, Metrics
from cutover.agent.errors import ActivationFailedError
from cutover.agent.host.state import AppState
from tests.agent.test_lifecycle import health, op
from tests.conftest import Host, PackageFactory


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = metrics.render().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_exposition_has_process_metrics_and_no_created_series() -> None:
    m = Metrics()
    m.operations.labels("activate", "demo", "succeeded").inc()
    m.request_seconds.labels("/v1/apps").observe(0.01)
    names = {name for name, _ in samples(m)}
    assert not {n for n in names if n.endswith("_created")}, names
    assert "cutover_operations_total" in names
    assert {"process_cpu_seconds_total", "process_resident_memory_bytes"} <= names
    assert {"process_open_fds", "process_start_time_seconds", "python_info"} <= names


def test_last_successful_deploy_timestamp_per_app(host: Host, make_package: PackageFactory) -> None:
    m = Metrics()
    key = ("cutover_app_last_successful_deploy_timestamp_seconds", (("app", "demo"),))
    m.set_app("demo", AppReleases.of(AppState(app="demo")))
    assert key not in samples(m)  # never deployed: no sample, not a zero

    op(host, "stage", make_package("1.0.0"))
    op(host, "activate", "1.0.0")
    state = host.state()
    first = datetime.fromisoformat(state["releases"]["1.0.0"]["activated_at"]).timestamp()
    m.set_app("demo", AppReleases.of(AppState.model_validate(state)))
    assert samples(m)[key] == first

    failing = health("live", {"type": "command", "argv": ["false"]})
    op(host, "stage", make_package("2.0.0", toml=failing))
    with pytest.raises(ActivationFailedError):
        op(host, "activate", "2.0.0")
    assert host.current == "releases/1.0.0"
    m.set_app("demo", AppReleases.of(AppState.model_validate(host.state())))
    assert samples(m)[key] == first  # a reverted deploy is not a successful one
