"""Structured (logfmt) logging to stderr, journald-friendly.

Under systemd (JOURNAL_STREAM set) each line starts with a ``<N>`` syslog priority,
which journald turns into the entry's priority. Extra fields passed with
``log.info("msg", extra={...})`` become ``key=value`` pairs.
"""

from __future__ import annotations

import logging
import os
import sys

_STD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _quote(value: object) -> str:
    text = str(value)
    if text == "" or any(c in text for c in ' "=\n\t'):
        return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    return text


class LogfmtFormatter(logging.Formatter):
    def __init__(self, journal: bool) -> None:
        super().__init__()
        self.journal = journal

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if not self.journal:
            parts.append(f"ts={self.formatTime(record, '%Y-%m-%dT%H:%M:%S')}.{int(record.msecs):03d}")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"msg={_quote(record.getMessage())}")
        for key, value in record.__dict__.items():
            if key not in _STD and not key.startswith("_"):
                parts.append(f"{key}={_quote(value)}")
        if record.exc_info:
            parts.append(f"exc={_quote(self.formatException(record.exc_info))}")
        line = " ".join(parts)
        if self.journal:
            line = f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def fields(data: dict) -> dict:
    """``extra=`` for arbitrary key/values: keys LogRecord reserves (name, msg, ...) get a prefix."""
    return {(f"f_{k}" if k in _STD else k): v for k, v in data.items()}


def setup(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogfmtFormatter(journal="JOURNAL_STREAM" in os.environ))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # library chatter stays out unless asked for
    for noisy in ("dbus_fast", "dbus_next", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fatal(prog: str, message: str) -> None:
    """A message that ends the program, one line per problem, on stderr; under systemd at error
    priority (``journalctl -p err`` shows it)."""
    prefix = "<3>" if "JOURNAL_STREAM" in os.environ else ""
    for line in str(message).splitlines() or [""]:
        print(f"{prefix}{prog}: {line}", file=sys.stderr)
