"""Log set-up and the broker's events: one line per event, as text or as JSON.

`configure` installs one handler on standard error: human-readable lines by
default (`2026-12-07 08:00:00,000 INFO moorage.events: connection 7 opened
...`), or one JSON object per line with `log_format = "json"` (`--log-format
json`), for log shippers:

    {"time": "2026-12-07T08:00:00.000+00:00", "level": "info",
     "logger": "moorage.events", "message": "connection 7 opened ...",
     "event": "connection.opened", "connection": 7, "peer": "127.0.0.1:50312",
     "protocol": "amqp091", "user": "guest", "vhost": "/"}

`event` logs one event with its fields: `event` names it (`connection.opened`,
`connection.closed`, `connection.refused`, `connection.error` for an error sent
to a client, `alarm.raised`, `alarm.cleared`, `store.opened`), `connection` and
`peer` say whose it is. The fields travel as the record's `extra`, so the text
format shows the message alone and the JSON format every field. Any other
log line keeps its message and gains `time`, `level` and `logger`.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any

LOG_FORMATS = ("text", "json")
EVENTS = logging.getLogger("moorage.events")

# attributes every LogRecord has: whatever else a record carries came as `extra`
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and the extra fields."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value if isinstance(value, str | int | float | bool) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(level: str, log_format: str = "text") -> None:
    """Send every log line to standard error at `level`, as text or JSON lines."""
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())


def event(name: str, message: str, *, level: int = logging.INFO, **fields: Any) -> None:
    """Log the event `name` (`connection.opened`, ...) with its fields (`connection`,
    `peer`, `protocol`, `user`, `vhost`, `reason`, ...); None fields are left out."""
    if EVENTS.isEnabledFor(level):
        extra = {"event": name, **{k: v for k, v in fields.items() if v is not None}}
        EVENTS.log(level, message, extra=extra)
