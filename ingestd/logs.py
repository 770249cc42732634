"""Logging: one line per record, `key=value` fields, journald priorities under systemd.

    log.info("connected", extra={"conn": "binance-0", "streams": 100})
    -> 2026-11-21T14:38:59.123Z info  ingestd.feed: connected conn=binance-0 streams=100   (terminal)
    -> <6>ingestd.feed: connected conn=binance-0 streams=100                               (journald)

Under systemd, stderr is a stream into journald, which stamps its own time and reads an optional
`<N>` syslog-priority prefix on each line (SyslogLevelPrefix=, on by default). Emitting that
prefix makes `journalctl -p warning -u ingestd@binance` work; a timestamp there would be noise.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any, Callable, Mapping, TextIO

LOG_LEVELS = ("debug", "info", "warning", "error")

# syslog(3) priorities journald understands as a line prefix.
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}

# Attributes every LogRecord has; anything else on a record came from `extra=` and is a field.
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}

_HANDLER_NAME = "ingestd"
_NOISY_LIBRARIES = ("httpx", "httpcore", "websockets", "hpack")


def _syslog_priority(levelno: int) -> int:
    for threshold in (logging.CRITICAL, logging.ERROR, logging.WARNING, logging.INFO):
        if levelno >= threshold:
            return _SYSLOG_PRIORITY[threshold]
    return _SYSLOG_PRIORITY[logging.DEBUG]


def format_value(value: Any) -> str:
    """A field value as `key=value` readers (and grep, and logfmt parsers) expect it."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c.isspace() or c in '="\\' for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class KeyValueFormatter(logging.Formatter):
    def __init__(self, *, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        fields = " ".join(
            f"{key}={format_value(value)}" for key, value in vars(record).items() if key not in _RECORD_ATTRS
        )
        line = f"{record.name}: {record.getMessage()}"
        if fields:
            line = f"{line} {fields}"
        lines = [line]
        if record.exc_info:
            lines.extend(self.formatException(record.exc_info).splitlines())
        if record.stack_info:
            lines.extend(self.formatStack(record.stack_info).splitlines())
        if self.journal:
            # journald turns every line into its own entry, so a traceback's lines each need the
            # prefix, or they would be filed at the unit's default level instead of as errors.
            prefix = f"<{_syslog_priority(record.levelno)}>"
            return "\n".join(prefix + text for text in lines)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        lines[0] = f"{stamp}.{int(record.msecs):03d}Z {record.levelname.lower():<7} {lines[0]}"
        return "\n".join(lines)


def stream_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True when `stream` is the journald stream systemd gave this service.

    $JOURNAL_STREAM is inherited by every child process, including shells whose stderr is a
    terminal, so when we can see the stream's file we compare its device:inode with the variable
    (what sd_journal_stream_fd(3) recommends). Streams without a file (tests) trust the variable.
    """
    environ = os.environ if environ is None else environ
    value = environ.get("JOURNAL_STREAM")
    if not value:
        return False
    try:
        stat = os.fstat(stream.fileno())
    except (AttributeError, OSError, ValueError):
        return True
    return value == f"{stat.st_dev}:{stat.st_ino}"


def setup_logging(level: str, *, stream: TextIO | None = None) -> None:
    """Send all logging to `stream` (default stderr) at `level`; safe to call again to change it."""
    if level.lower() not in LOG_LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}, got {level!r}")
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(KeyValueFormatter(journal=stream_is_journal(stream)))
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # Libraries that log every request or connection at INFO would drown our own lines; their
    # warnings and errors still come through.
    for noisy in _NOISY_LIBRARIES:
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))


class RateLimitedLog:
    """Log a recurring event at most once per `interval_s` per kind, counting what was dropped.

    For events that can repeat thousands of times a second (decode errors, a sink rejecting
    writes): the first occurrence is logged at once, later ones at most once per interval with
    "(N more since last report)", so the log stays readable and the count is still visible.
    """

    def __init__(self, interval_s: float = 10.0, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._last_emit: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def log(self, logger: logging.Logger, level: int, kind: str, msg: str, **fields: Any) -> bool:
        """Emit now or count as suppressed; returns whether a line was emitted."""
        now = self._clock()
        last = self._last_emit.get(kind)
        if last is not None and now - last < self.interval_s:
            self._suppressed[kind] = self._suppressed.get(kind, 0) + 1
            return False
        suppressed = self._suppressed.pop(kind, 0)
        if suppressed:
            msg = f"{msg} ({suppressed} more since last report)"
        self._last_emit[kind] = now
        # `extra` keys that clash with LogRecord attributes make logging raise KeyError; a
        # diagnostic helper must never be the thing that crashes, so rename them instead.
        extra = {(f"{key}_" if key in _RECORD_ATTRS else key): value for key, value in fields.items()}
        logger.log(level, msg, extra=extra)
        return True
