"""Log lines as journald and an operator see them (issue 9, item 17): real priorities when
stdout is the journal (``<N>`` prefixes, so ``journalctl -p warning`` finds failed deploys), no
watchfiles chatter, and the manifest's commit in the journal."""

from __future__ import annotations

import io
import json
import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from cutover.agent._util.logsetup import configure_logging
from tests.agent.test_lifecycle import op
from tests.conftest import Host, PackageFactory


@pytest.fixture
def restore_logging() -> Iterator[None]:
    yield
    configure_logging("console", "info")
    logging.getLogger().handlers.clear()
    structlog.reset_defaults()


def _emit_all() -> None:
    log = structlog.get_logger("test")
    log.debug("quiet")
    log.info("deployed", version="1.0.0")
    log.warning("slow_hook", hook="migrate")
    log.error("lifecycle_operation", outcome="failed")
    logging.getLogger("aiohttp.server").error("stdlib error")
    logging.getLogger("watchfiles.main").info("1 change detected")


def test_lines_carry_syslog_priorities_when_stdout_is_the_journal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    out = tmp_path / "journal-stream"
    with out.open("w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        configure_logging("json", "debug", stream)
        _emit_all()
    lines = out.read_text().splitlines()
    prefixes = [line[:3] for line in lines]
    assert prefixes == ["<7>", "<6>", "<4>", "<3>", "<3>"], lines
    events = [json.loads(line[3:])["event"] for line in lines]
    assert events == ["quiet", "deployed", "slow_hook", "lifecycle_operation", "stdlib error"]


def test_no_prefix_when_stdout_is_not_the_journal_and_watchfiles_is_quiet(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    monkeypatch.setenv("JOURNAL_STREAM", "1:2")  # some other stream (a parent's)
    out = tmp_path / "plain"
    with out.open("w") as stream:
        configure_logging("json", "info", stream)
        _emit_all()
    docs = [json.loads(line) for line in out.read_text().splitlines()]
    assert [d["event"] for d in docs] == [
        "deployed",
        "slow_hook",
        "lifecycle_operation",
        "stdlib error",
    ]  # no watchfiles line
    assert [d["level"] for d in docs] == ["info", "warning", "error", "error"]


def test_the_journal_records_the_manifests_commit(
    host: Host, make_package: PackageFactory, tmp_path: Path
) -> None:
    from cutover.agent.keys import load_private_key
    from cutover.controller.build import build_package, sign_package

    src = tmp_path / "commit-src"
    src.mkdir()
    (src / "cutover.toml").write_text('app = "demo"\n')
    (src / "index.html").write_text("hi\n")
    pkg = tmp_path / "commit.cutover"
    build_package(src, pkg, version="1.0.0", commit="3f9c2e1", branch="main")
    sign_package(pkg, load_private_key(tmp_path / "keys" / "release"))
    op(host, "stage", pkg)
    done = [e for e in host.journal() if e["event"] == "stage.done"]
    assert [(e["version"], e["commit"]) for e in done] == [("1.0.0", "3f9c2e1")]


def test_the_claimed_keyid_is_logged_only_in_a_keyid_shape() -> None:
    from cutover.agent.trust.httpsig import claimed_keyid

    good = "0123456789abcdef" * 4
    head = 'cutover=("@method" "@authority" "@path" "@query" "content-type" "content-digest")'
    assert claimed_keyid({"Signature-Input": f'{head};keyid="{good}"'}) == good
    assert claimed_keyid({"Signature-Input": f'{head};keyid="x\\"; DROP"'}) is None
    assert claimed_keyid({"Signature-Input": f"{head};keyid=12"}) is None
    assert claimed_keyid({"Signature-Input": "not a dictionary ((("}) is None
    assert claimed_keyid({}) is None


class _Writes(io.StringIO):
    """A stream that records each ``write`` call (an unbuffered stdout makes each a syscall)."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, s: str) -> int:
        self.calls.append(s)
        return super().write(s)


def test_each_line_is_one_write(restore_logging: None) -> None:
    """The daemon's stage workers share its stdout: a line written as message, then newline (as
    ``print`` does) could get another process's line in between (seen with PYTHONUNBUFFERED)."""
    out = _Writes()
    configure_logging("json", "info", stream=out)
    structlog.get_logger("test").info("deployed", version="1.0.0")
    logging.getLogger("aiohttp.server").error("stdlib error")
    assert len(out.calls) == 2, out.calls
    for call in out.calls:
        assert call.endswith("\n") and call.count("\n") == 1, out.calls
        json.loads(call)


# What a fresh process logs with configure_logging_lazily (the CLI's and the stage worker's set-up,
# agent/_util/lazylog.py) or with configure_logging, through our loggers and the stdlib's: it
# prints the lines, then whether structlog was imported before the first line that passed.
_LAZY_PROGRAM = """
import logging, sys
from cutover.agent._util.lazylog import configure_logging_lazily, get_logger

if sys.argv[1] == "lazy":
    configure_logging_lazily("json", "warning", stream=sys.stdout)
else:
    from cutover.agent._util.logsetup import configure_logging

    configure_logging("json", "warning", stream=sys.stdout)
log = get_logger("test")
log.debug("quiet")
log.info("deployed", version="1.0.0")
before = "structlog" in sys.modules
if sys.argv[2] == "stdlib-first":
    logging.getLogger("aiohttp.server").error("stdlib error")
log.warning("slow_hook", hook="migrate")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("lifecycle_operation", outcome="failed")
logging.getLogger("aiohttp.server").error("stdlib error")
logging.getLogger("watchfiles.main").warning("1 change detected")
print("structlog before the first line:", before)
"""


def _run_logging(mode: str, order: str) -> tuple[list[dict[str, object]], str]:
    proc = subprocess.run(
        [sys.executable, "-c", _LAZY_PROGRAM, mode, order],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"},
    )
    *lines, last = proc.stdout.splitlines()
    return [json.loads(line) for line in lines], last


@pytest.mark.parametrize("order", ["ours-first", "stdlib-first"])
def test_lazy_logging_writes_what_configure_logging_writes(order: str) -> None:
    """Below the level nothing is imported; the first line that passes (ours or the standard
    library's) configures structlog with the same chain, so the lines are the eager ones."""
    lazy, lazy_note = _run_logging("lazy", order)
    eager, eager_note = _run_logging("eager", order)
    assert lazy_note == "structlog before the first line: False"
    assert eager_note == "structlog before the first line: True"

    def shape(docs: list[dict[str, object]]) -> list[dict[str, object]]:
        return [{k: v for k, v in d.items() if k not in ("timestamp", "exception")} for d in docs]

    assert shape(lazy) == shape(eager)
    events = [d["event"] for d in lazy]
    expected = ["slow_hook", "lifecycle_operation", "stdlib error", "1 change detected"]
    assert events == (["stdlib error", *expected] if order == "stdlib-first" else expected)
    failed = next(d for d in lazy if d["event"] == "lifecycle_operation")
    assert failed["level"] == "error" and "ValueError: boom" in str(failed["exception"])
    assert all(str(d["timestamp"]).endswith("Z") for d in lazy)


def test_lazy_logging_refuses_what_configure_logging_refuses() -> None:
    from cutover.agent._util.lazylog import configure_logging_lazily

    with pytest.raises(ValueError, match="log format 'xml'"):
        configure_logging_lazily("xml", "info")
    with pytest.raises(ValueError, match="log level 'loud'"):
        configure_logging_lazily("json", "loud")


def test_first_lines_from_several_threads_apply_the_lazy_configuration_once(
    restore_logging: None,
) -> None:
    """The CLI extracts in threads: their first lines race to apply the recorded configuration;
    every line is written once, as JSON, through one configuration."""
    import threading

    from cutover.agent._util import lazylog

    out = _Writes()
    lazylog.configure_logging_lazily("json", "warning", stream=out)
    log = lazylog.get_logger("test")
    start = threading.Barrier(8)

    def work(n: int) -> None:
        start.wait()
        log.info("dropped", n=n)
        log.warning("kept", n=n)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    docs = [json.loads(line) for line in out.calls]
    assert sorted(d["n"] for d in docs) == list(range(8))
    assert {d["event"] for d in docs} == {"kept"}
    assert not lazylog._pending
    assert len(logging.getLogger().handlers) == 1
