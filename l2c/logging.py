"""Log formatting: one JSON object per line for log shippers, or plain text for people.

``JsonFormatter`` writes ``ts``, ``level``, ``logger``, ``message``, every key passed with
``extra=`` and, inside an API request, the request's ``correlation_id``. ``PlainFormatter``
is the usual one-line format with the same extra keys appended as ``key=value``.
``LOG_FORMAT=json|plain`` chooses between them in the settings.
"""

from __future__ import annotations

import json
import logging
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any

# Set by l2c.middleware.CorrelationIdMiddleware for the duration of a request.
correlation_id_var: ContextVar[str | None] = ContextVar("correlation_id", default=None)

# The attributes every LogRecord has; whatever else is on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", logging.INFO, "", 0, "", None, None)).keys()
    | {"message", "asctime", "taskName"}
)


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    """The ``extra=`` keys of ``record``, in the order they were given."""
    return {key: value for key, value in vars(record).items() if key not in _STANDARD}


def _default(value: Any) -> str:
    # UUIDs, datetimes, Decimals and the like print as their text.
    return str(value)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            # A field named like one of ours must not hide the record's own.
            entry[key if key not in entry else f"extra_{key}"] = value
        if "correlation_id" not in entry:
            current = correlation_id_var.get()
            if current:
                entry["correlation_id"] = current
        if record.exc_info:
            entry["exc_info"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=_default, ensure_ascii=False)


class PlainFormatter(logging.Formatter):
    """``%(asctime)s %(levelname)s %(name)s %(message)s`` plus ``key=value`` extras."""

    def __init__(self, fmt: str | None = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(fmt or "%(asctime)s %(levelname)s %(name)s %(message)s", *args, **kwargs)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        extras = record_extras(record)
        if "correlation_id" not in extras and correlation_id_var.get():
            extras["correlation_id"] = correlation_id_var.get()
        if not extras:
            return text
        pairs = " ".join(f"{key}={value}" for key, value in extras.items() if value is not None)
        head, newline, tail = text.partition("\n")
        # Keep a traceback below the line it belongs to.
        return f"{head} {pairs}{newline}{tail}"
