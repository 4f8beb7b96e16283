"""Module-level loggers that import structlog only when a line is actually logged.

Why: ``import structlog`` imports ``structlog.dev``, which imports rich (its traceback renderer)
when rich is installed, and we install rich for the controller's tables: ~40 ms of every process
start (issue 12). A successful ``cutover-agent stage`` logs nothing at or above ``warning``, the
CLI's level, so with these loggers and :func:`configure_logging_lazily` it never imports
structlog at all. A line that passes the level (a warning, a failure) configures structlog
first, with exactly the chain :func:`agent._util.logsetup.configure_logging` builds, so what is
written does not change.

Every agent module logs through :func:`get_logger` (``log = get_logger(__name__)``), with
structlog's calling convention: a fixed event name and key/value fields.
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Final, TextIO

__all__ = [
    "LEVELS",
    "Logger",
    "apply_pending",
    "check_settings",
    "configure_logging_lazily",
    "forget_pending",
    "get_logger",
    "quiet_noisy_loggers",
]

LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}
_FORMATS: Final = ("auto", "json", "console")
_METHOD_LEVELS: Final = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "exception": logging.ERROR,
    "critical": logging.CRITICAL,
}

# The configuration configure_logging_lazily recorded and nothing has applied yet: at most one
# (fmt, level name, numeric level, stream). Logging configuration is process-wide, as structlog's.
_pending: list[tuple[str, str, int, TextIO | None]] = []
_applying = (
    threading.RLock()
)  # two threads' first lines (the CLI extracts in threads) apply it once


def check_settings(fmt: str, level: str) -> int:
    """The numeric level of ``level``, after checking both settings.

    Raises:
        ValueError: unknown ``fmt`` or ``level``.
    """
    if fmt not in _FORMATS:
        raise ValueError(f"log format {fmt!r} is not one of {', '.join(_FORMATS)}")
    try:
        return LEVELS[level.lower()]
    except KeyError:
        raise ValueError(f"log level {level!r} is not one of {', '.join(LEVELS)}") from None


def configure_logging_lazily(
    fmt: str = "auto", level: str = "info", stream: TextIO | None = None
) -> None:
    """Record a logging configuration; apply it when the first line passes ``level``.

    Same arguments and output as :func:`agent._util.logsetup.configure_logging`. Until a line
    passes the level, structlog is not imported: loggers drop lines below it, and the standard
    library's root logger gets a handler that applies the configuration on its first record.

    Raises:
        ValueError: unknown ``fmt`` or ``level``.
    """
    numeric = check_settings(fmt, level)
    _pending[:] = [(fmt, level, numeric, stream)]
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(_DeferredHandler())
    root.setLevel(max(numeric, logging.INFO))
    quiet_noisy_loggers()


def quiet_noisy_loggers() -> None:
    """Loggers of dependencies that say too much at info."""
    # aiohttp's access log duplicates our canonical request line; its error logger stays.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # watchfiles logs every batch of changes it sees (the config reloader's): noise in the journal.
    logging.getLogger("watchfiles").setLevel(logging.WARNING)


def apply_pending() -> None:
    """Apply the configuration :func:`configure_logging_lazily` recorded, if any is waiting."""
    with _applying:
        if not _pending:
            return
        fmt, level, _, stream = _pending[0]
        from cutover.agent._util.logsetup import configure_logging

        configure_logging(fmt, level, stream=stream)  # clears _pending


def forget_pending() -> None:
    """Drop a recorded configuration (an eager ``configure_logging`` replaces it)."""
    _pending.clear()


class _DeferredHandler(logging.Handler):
    """The root handler while the configuration waits: the first record applies it."""

    def emit(self, record: logging.LogRecord) -> None:
        apply_pending()
        for handler in logging.getLogger().handlers:
            if handler is not self and record.levelno >= handler.level:
                handler.handle(record)


class Logger:
    """A module's logger: structlog's methods, resolved on the first line that is written."""

    __slots__ = ("_bound", "_name")

    def __init__(self, name: str) -> None:
        self._name = name
        self._bound: Any = None

    def _log(self, method: str, event: str, fields: dict[str, Any]) -> None:
        pending = _pending[:1]  # one read: another thread may apply it meanwhile
        if pending:
            if _METHOD_LEVELS[method] < pending[0][2]:
                return
            apply_pending()
        if self._bound is None:
            import structlog

            # a lazy proxy: it follows later structlog.configure calls (the daemon's reload)
            self._bound = structlog.get_logger(self._name)
        getattr(self._bound, method)(event, **fields)

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def exception(self, event: str, **fields: Any) -> None:
        """An error line with the exception being handled (call it in an ``except`` block)."""
        self._log("exception", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)


def get_logger(name: str) -> Logger:
    """The logger of module ``name`` (``log = get_logger(__name__)``)."""
    return Logger(name)
