"""Structured logs: a JSON formatter for stdlib logging and the per-stream access record.

Records carry their fields as LogRecord attributes (``logger.info(msg, extra={...})``):
a plain formatter shows the message, :class:`JsonFormatter` writes every field.
Nothing here adds handlers at import; the proxy CLI installs the formatter when run
with ``--log-format json``, and applications use :func:`use_json_logs` or their own
logging configuration.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any, Final

from ._tracing import current_trace_ids

__all__ = ["ACCESS_LOGGER", "JsonFormatter", "log_access", "use_json_logs"]

#: The logger of the per-stream access records.
ACCESS_LOGGER: Final = "transports.access"

# Attributes every LogRecord has: everything else on a record came from ``extra=``.
_STANDARD: Final = frozenset(
    {
        *logging.LogRecord("", 0, "", 0, "", (), None).__dict__,
        "message",
        "asctime",
        "taskName",
    }
)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``ts``, ``level``, ``logger``, ``message``, then the fields.

    Fields are the record's ``extra=`` attributes; values that are not JSON types
    are written with ``str()``. An exception adds ``exc_type`` and ``exc_info`` (the
    traceback). The current OpenTelemetry ``trace_id``/``span_id`` are added when
    a span is active and the record has none.
    """

    def format(self, record: logging.LogRecord) -> str:
        """Format ``record`` as one line of JSON."""
        out: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if "trace_id" not in out:
            ids = current_trace_ids()
            if ids is not None:
                out["trace_id"], out["span_id"] = ids
        if record.exc_info and record.exc_info[0] is not None:
            out["exc_type"] = record.exc_info[0].__name__
            out["exc_info"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc_info"] = record.exc_text
        if record.stack_info:
            out["stack_info"] = self.formatStack(record.stack_info)
        return json.dumps(out, default=str, separators=(",", ":"), ensure_ascii=False)


def use_json_logs(level: int | str = logging.INFO, stream: IO[str] | None = None) -> None:
    """Send the root logger's records to ``stream`` (default stderr) as JSON lines.

    Replaces the root logger's handlers, as ``logging.basicConfig(force=True)`` does.
    """
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    logging.basicConfig(level=level, handlers=[handler], force=True)


def log_access(logger: logging.Logger, fields: Mapping[str, Any], *, level: int) -> None:
    """Write one access record: a short human message plus ``fields`` as extras."""
    if not logger.isEnabledFor(level):
        return
    message = "%s %s %s: %d frames, %d bytes, %.3fs" % (  # noqa: UP031 - one format, lazily
        fields.get("transport"),
        fields.get("route"),
        fields.get("outcome"),
        fields.get("frames", 0),
        fields.get("bytes", 0),
        fields.get("duration_s", 0.0),
    )
    logger.log(level, message, extra=dict(fields))
