"""structlog configuration shared by the daemon and the CLIs (STYLE.md, "Logging").

One processor chain for everything that logs, including the standard library's loggers (aiohttp's
server errors, asyncio's warnings), so journald receives one JSON object per line::

    merge_contextvars -> add_log_level -> format_exc_info -> TimeStamper(iso, utc) -> JSONRenderer

On a terminal (``fmt="auto"`` and stdout is a tty, or ``fmt="console"``) the last step is
structlog's ConsoleRenderer instead, and exceptions are left for it to pretty-print.

When the stream is the journal (systemd sets ``JOURNAL_STREAM`` to its device and inode), each
JSON line starts with its syslog priority, ``<3>`` error, ``<4>`` warning, ``<6>`` info, ``<7>``
debug (sd-daemon(3)): journald strips the prefix and records the priority, so
``journalctl -u cutover-agent -p warning`` finds failed deploys. watchfiles' per-change lines
(the config reloader) are quieted to warnings.

The on-host CLI and the stage worker call ``configure_logging_lazily`` (agent/_util/lazylog.py)
instead: the same configuration, applied when the first line passes the level, so a command
that logs nothing never imports structlog (nor rich, which ``structlog.dev`` imports).

Request and operation context (request id, keyid, operation id, app, version) is bound with
``structlog.contextvars`` by the server, so every line logged while handling a request carries it.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, TextIO

import structlog
from structlog.typing import Processor

from cutover.agent._util.lazylog import LEVELS, check_settings, forget_pending, quiet_noisy_loggers

__all__ = ["LEVELS", "configure_logging"]


# sd-daemon(3) priorities by structlog level name.
_PRIORITY = {"critical": 2, "exception": 3, "error": 3, "warning": 4, "warn": 4, "info": 6}


def _is_journal(stream: TextIO) -> bool:
    """Whether ``stream`` is the journal stream systemd connected (``JOURNAL_STREAM``)."""
    expected = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError, AttributeError):  # closed, or no file descriptor (StringIO)
        return False
    return bool(expected) and expected == f"{st.st_dev}:{st.st_ino}"


def _with_priority(render: Processor) -> Processor:
    def prefixed(logger: Any, name: str, event_dict: structlog.typing.EventDict) -> str:
        priority = _PRIORITY.get(str(event_dict.get("level", "info")), 7)
        line = render(logger, name, event_dict)
        return f"<{priority}>{line!s}"

    return prefixed


def _renderer(fmt: str, stream: TextIO) -> tuple[Processor, bool]:
    """The final processor and whether exceptions must be pre-formatted for it."""
    if fmt == "console" or (fmt == "auto" and stream.isatty()):
        return structlog.dev.ConsoleRenderer(colors=stream.isatty()), False
    json_renderer: Processor = structlog.processors.JSONRenderer(sort_keys=False)
    return (_with_priority(json_renderer) if _is_journal(stream) else json_renderer), True


def configure_logging(fmt: str = "auto", level: str = "info", stream: TextIO | None = None) -> None:
    """Configure structlog and the standard library's logging to write to ``stream`` (stdout).

    The daemon logs to stdout (journald); the CLIs pass stderr so ``--json`` output stays clean.

    Idempotent: calling it again (the daemon does, once its config names a format) replaces the
    previous configuration.

    Args:
        fmt: ``"json"``, ``"console"`` or ``"auto"`` (console on a tty, JSON otherwise).
        level: ``"debug"``, ``"info"``, ``"warning"`` or ``"error"``.

    Raises:
        ValueError: unknown ``fmt`` or ``level``.
    """
    numeric = check_settings(fmt, level)
    forget_pending()  # this configuration replaces one configure_logging_lazily recorded
    out = stream if stream is not None else sys.stdout
    renderer, format_exceptions = _renderer(fmt, out)
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
    ]
    if format_exceptions:
        shared.append(structlog.processors.format_exc_info)
    shared.append(structlog.processors.TimeStamper(fmt="iso", utc=True))

    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        # One write per line (message and newline together, unlike print): the daemon's stage
        # workers share its stdout, and a line split in two writes could be interleaved.
        logger_factory=structlog.WriteLoggerFactory(out),
        # The daemon reconfigures after reading its config: loggers must not cache the old chain.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[_stdlib_event, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(max(numeric, logging.INFO))
    quiet_noisy_loggers()


def _stdlib_event(_: Any, __: str, event_dict: structlog.typing.EventDict) -> Any:
    """Name stdlib records by their logger so they stay distinguishable from our fixed events."""
    record = event_dict.get("_record")
    if record is not None:
        event_dict.setdefault("logger", record.name)
    return event_dict
