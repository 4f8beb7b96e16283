"""fleet.toml is validated strictly, errors name the host and the key; selection is exact."""

from __future__ import annotations

from pathlib import Path

import pytest

from cutover.agent.errors import ConfigError
from cutover.controller.fleet.inventory import FLEET_ENV, fleet_path, load_fleet
from cutover.controller.fleet.selection import parse_host_list, select_hosts

GOOD = """
app = "ame"
controller_key = "keys/ops"

[concurrency]
max_parallel = 3

[hosts.web-1]
url = "https://web-1.example.net:7801/"
groups = ["web", "production"]
tls_fingerprint = "sha256:%s"

[hosts.web-2]
url = "http://10.0.0.2:7801"
groups = ["web"]
authority = "web-2.internal:7801"

[hosts.db-1]
url = "https://db-1.example.net:7801"
groups = ["db", "production"]
tls_ca = "ca.pem"

[[webhooks]]
url = "https://hooks.slack.com/services/T/B/X"
events = ["deploy", "failure"]
""" % ("AB:" * 31 + "AB")


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "fleet.toml"
    path.write_text(text)
    return path


def test_a_complete_fleet_file_loads_with_paths_relative_to_it(tmp_path: Path) -> None:
    fleet = load_fleet(_write(tmp_path, GOOD))
    assert fleet.app == "ame" and fleet.controller_key == tmp_path / "keys" / "ops"
    assert list(fleet.hosts) == ["web-1", "web-2", "db-1"]
    assert fleet.hosts["web-1"].name == "web-1"
    assert fleet.hosts["web-1"].url == "https://web-1.example.net:7801"  # trailing / dropped
    assert fleet.hosts["db-1"].tls_ca == tmp_path / "ca.pem"
    assert fleet.hosts["web-2"].authority == "web-2.internal:7801"
    assert fleet.concurrency.max_parallel == 3 and fleet.concurrency.timeout_s == 30
    assert fleet.webhooks[0].events == ["deploy", "failure"] and fleet.webhooks[0].timeout_s == 5
    assert fleet.groups() == {
        "web": ["web-1", "web-2"],
        "production": ["web-1", "db-1"],
        "db": ["db-1"],
    }


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        pytest.param(('groups = ["web"]\nauthority', 'groups = ["web"]\nauthorty'), "host 'web-2': key 'authorty'", id="typo-in-host-key"),
        pytest.param(('url = "http://10.0.0.2:7801"', 'url = "ftp://10.0.0.2"'), "host 'web-2': key 'url'", id="bad-url-scheme"),
        pytest.param(('url = "http://10.0.0.2:7801"\n', ""), "host 'web-2': key 'url': Field required", id="missing-url"),
        pytest.param(('groups = ["db", "production"]', 'groups = ["db prod"]'), "host 'db-1': key 'groups'", id="bad-group-name"),
        pytest.param(("max_parallel = 3", "max_parallel = 0"), "key 'concurrency.max_parallel'", id="zero-parallel"),
        pytest.param(("max_parallel = 3", "max_paralel = 3"), "key 'concurrency.max_paralel'", id="typo-in-concurrency"),
        pytest.param(('events = ["deploy", "failure"]', 'events = ["deploi"]'), "webhooks[0]: key 'events.0'", id="unknown-webhook-event"),
        pytest.param(('app = "ame"', 'apps = "ame"'), "key 'apps'", id="typo-at-top-level"),
        pytest.param(('tls_ca = "ca.pem"', 'tls_ca = "ca.pem"\ntls_fingerprint = "%s"' % ("ab" * 32)), "host 'db-1': set tls_ca or tls_fingerprint", id="two-tls-pins"),
        pytest.param(("sha256:AB", "sha256:ZZ"), "host 'web-1': key 'tls_fingerprint'", id="fingerprint-not-hex"),
        pytest.param(('authority = "web-2', 'name = "web-9"\nauthority = "web-2'), "host 'web-2': drop key 'name'", id="name-key-in-host-table"),
    ],
)  # fmt: skip
def test_invalid_fleet_files_name_the_host_and_the_key(
    tmp_path: Path, edit: tuple[str, str], expected: str
) -> None:
    old, new = edit
    assert old in GOOD
    path = _write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as info:
        load_fleet(path)
    assert expected in str(info.value) and str(path) in str(info.value)


def test_missing_file_says_how_to_choose_one(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"--fleet FILE or set {FLEET_ENV}"):
        load_fleet(tmp_path / "nope.toml")


def test_no_hosts_and_broken_toml_are_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="key 'hosts': Field required"):
        load_fleet(_write(tmp_path, 'app = "ame"\n'))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_fleet(_write(tmp_path, "[hosts.web-1\n"))


def test_fleet_path_prefers_the_option_then_the_environment() -> None:
    assert fleet_path("a.toml", {FLEET_ENV: "b.toml"}) == Path("a.toml")
    assert fleet_path(None, {FLEET_ENV: "b.toml"}) == Path("b.toml")
    assert fleet_path(None, {}) == Path("fleet.toml")


@pytest.mark.parametrize(
    ("group", "hosts", "expected"),
    [
        pytest.param(None, "", ["web-1", "web-2", "db-1"], id="everything"),
        pytest.param("production", "", ["web-1", "db-1"], id="group"),
        pytest.param(None, "db-1, web-1,,", ["web-1", "db-1"], id="hosts-in-file-order"),
        pytest.param("web", "web-2", ["web-2"], id="host-within-group"),
    ],
)
def test_selection(tmp_path: Path, group: str | None, hosts: str, expected: list[str]) -> None:
    fleet = load_fleet(_write(tmp_path, GOOD))
    assert [h.name for h in select_hosts(fleet, group, parse_host_list(hosts))] == expected


@pytest.mark.parametrize(
    ("group", "hosts", "message"),
    [
        pytest.param(
            "staging", "", "no group 'staging'; groups: db, production, web", id="unknown-group"
        ),
        pytest.param(None, "web-9", "unknown host(s) 'web-9'", id="unknown-host"),
        pytest.param("db", "web-1", "'web-1' not in group 'db'", id="host-outside-group"),
    ],
)
def test_bad_selection_is_refused(
    tmp_path: Path, group: str | None, hosts: str, message: str
) -> None:
    fleet = load_fleet(_write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_hosts(fleet, group, parse_host_list(hosts))
