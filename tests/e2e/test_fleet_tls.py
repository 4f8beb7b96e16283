"""fleet.toml's TLS settings against a real agent serving https on 127.0.0.1: a certificate
pinned by fingerprint or trusted through tls_ca connects; a wrong pin is unreachable."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import BIN, Keys
from tests.e2e.test_api_flow import _self_signed

pytestmark = [pytest.mark.e2e]


def _status(fleet: Path) -> tuple[int, dict[str, Any]]:
    env = {k: v for k, v in os.environ.items() if k != "CUTOVER_KEY"}
    proc = subprocess.run(
        [str(BIN / "cutover"), "status", "--fleet", str(fleet), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc.returncode, json.loads(proc.stdout)


def test_pinned_and_ca_trusted_agents_connect_and_a_wrong_pin_does_not(
    make_agent: Any, tmp_path: Path, keys: Keys
) -> None:
    cert, key, fingerprint = _self_signed(tmp_path / "tls")
    agent = make_agent(tls_cert=str(cert), tls_key=str(key))
    agent.start()
    pin = ":".join(fingerprint[i : i + 2] for i in range(0, 64, 2)).upper()
    fleet = tmp_path / "fleet.toml"
    fleet.write_text(
        f'app = "demo"\ncontroller_key = "{keys.dir / "deploy"}"\n\n'
        f'[hosts.pinned]\nurl = "{agent.base_url}"\ntls_fingerprint = "sha256:{pin}"\n\n'
        f'[hosts.by-ca]\nurl = "{agent.base_url}"\ntls_ca = "{cert}"\n\n'
        f'[hosts.wrong-pin]\nurl = "{agent.base_url}"\ntls_fingerprint = "{"00" * 32}"\n'
    )
    code, data = _status(fleet)
    rows = {r["host"]: r for r in data["hosts"]}
    assert code == 8, data
    assert rows["pinned"]["reachable"] and rows["pinned"]["error"] is None
    assert rows["by-ca"]["reachable"] and rows["by-ca"]["error"] is None
    assert rows["wrong-pin"]["reachable"] is False and data["unreachable"] == ["wrong-pin"]
