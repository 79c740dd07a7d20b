"""`log_format = "json"`: one JSON object per log line, for log shippers (issue 16, item 3).

Each line has ``time`` (UTC, ISO 8601, milliseconds), ``level``, ``logger`` and ``message``
(the same text the plain format shows, with the same rules: identifiers and reasons, never
a payload or a field value), and when known: ``interface`` and ``unit`` (the unit being
worked on, kept by router/tracing.py's :func:`~router.tracing.unit`, or passed by the log
call as ``extra``), ``stage``, ``outcome``, ``duration_ms`` (``extra`` of the log call),
``worker`` (its number, with ``workers`` > 1) and ``trace_id`` (when tracing is on). A
traceback goes in ``exception``, as one string.

JSON escapes every control character (and ``ensure_ascii`` every non-ASCII one, U+2028
included), so no value can forge a second line, as OneLineFormatter guarantees for text.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from router import tracing

FIELDS = ("interface", "unit", "stage", "outcome", "duration_ms", "worker")
"""Attributes a log call may pass in ``extra`` (they override the unit's context)."""


class JsonFormatter(logging.Formatter):
    """A log record as one JSON object on one line (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
                    .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        context = tracing.log_context()
        if context is not None:
            line["interface"], unit = context
            if unit:
                line["unit"] = unit
        for name in FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value
        trace_id = tracing.current_trace_id()
        if trace_id is not None:
            line["trace_id"] = trace_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exception"] = record.exc_text
        return json.dumps(line, ensure_ascii=True, default=str)
