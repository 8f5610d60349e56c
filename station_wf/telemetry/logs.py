"""Logging set-up: one JSON object per line for machines, or plain text for humans.

Context travels as `extra={...}` on the standard logging call, so no module needs a special logger;
`step_log` emits the per-step record of PRD 5.2 with a fixed set of field names.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Mapping
from typing import IO, Any

import msgspec
from opentelemetry import trace

ERROR_TYPES = frozenset({"timeout", "retry_exhausted", "validation", "agent_error"})
STEP_FIELDS = ("run_id", "step_id", "attempt", "executor", "duration_ms", "status", "error_type")

# Attributes every LogRecord has; anything else on a record came from `extra=`.
_RESERVED = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "taskName"}
_HANDLER_FLAG = "_station_wf_handler"
# One line per executor step at INFO: msgspec writes it ~10x cheaper than json (unknown types as str()).
_encode_line = msgspec.json.Encoder(enc_hook=str).encode


def record_extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _RESERVED and not k.startswith("_")}


def _trace_ids() -> dict[str, str]:
    """Correlate log lines with spans when a recording span is current."""
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return {}
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "msg", ...extra fields}`; `exc` holds a formatted traceback."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record_extras(record).items():
            out.setdefault(key, value)
        for key, value in _trace_ids().items():
            out.setdefault(key, value)
        if record.exc_info:
            out["exc_type"] = record.exc_info[0].__name__ if record.exc_info[0] else None
            out["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            out["exc"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        try:
            return _encode_line(out).decode()
        except (TypeError, ValueError, RecursionError):  # e.g. a non-str key in an extra field
            return json.dumps(out, default=str, ensure_ascii=False, separators=(",", ":"))


LEVEL_COLOURS = {"DEBUG": "2", "INFO": "36", "WARNING": "33", "ERROR": "31", "CRITICAL": "1;31"}
"""SGR codes of the level name on a colour terminal (the one place the daemon writes escape codes:
the log handler runs on every line and must not pay for a rendering library)."""


def _colour(stream: IO[str]) -> bool:
    import os

    try:
        return stream.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):
        return False


class TextFormatter(logging.Formatter):
    """The usual one-liner for a person, with `extra` fields appended as key=value; the level coloured
    on a terminal."""

    def __init__(self, colour: bool = False) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")
        self.colour = colour

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        line = super().formatMessage(record)
        if self.colour:
            code = LEVEL_COLOURS.get(record.levelname)
            if code:
                line = line.replace(record.levelname, f"\x1b[{code}m{record.levelname}\x1b[0m", 1)
        return line

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = record_extras(record)
        if not extras:
            return line
        tail = " ".join(f"{k}={v}" for k, v in extras.items())
        head, sep, rest = line.partition("\n")  # keep a traceback below the fields
        return f"{head} {tail}{sep}{rest}"


def resolve_format(fmt: str, stream: IO[str]) -> str:
    """`auto`: text for a person (the stream is a terminal), JSON for a collector (a file, a pipe, journald)."""
    fmt = fmt.strip().lower()
    if fmt == "auto":
        try:
            return "text" if stream.isatty() else "json"
        except (AttributeError, ValueError):  # a closed or odd stream: machines read it
            return "json"
    if fmt not in ("json", "text"):
        raise ValueError(f"log format must be 'auto', 'json' or 'text', got {fmt!r}")
    return fmt


def configure_logging(level: str = "INFO", fmt: str = "text", stream: IO[str] | None = None) -> logging.Handler:
    """Install one handler on the root logger (replacing the one a previous call installed).

    `fmt` is "json", "text" or "auto" (text on a terminal, else JSON). Pass `log_config=None` to
    uvicorn so its loggers propagate here."""
    out = stream if stream is not None else sys.stderr
    fmt = resolve_format(fmt, out)
    numeric = logging.getLevelName(level.strip().upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    handler = logging.StreamHandler(out)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(colour=_colour(out)))
    setattr(handler, _HANDLER_FLAG, True)
    root = logging.getLogger()
    for old in list(root.handlers):
        if getattr(old, _HANDLER_FLAG, False):
            root.removeHandler(old)
            old.close()
    root.addHandler(handler)
    root.setLevel(numeric)
    return handler


def classify_error(error: Mapping[str, Any] | None, *, attempt: int = 1, will_retry: bool | None = None) -> str | None:
    """Map a step error (`{"type": ...}`) onto the PRD's four error types.

    A final failure after retries (attempt > 1, no retry left) is `retry_exhausted` whatever its cause;
    otherwise timeout and validation keep their names and everything else is `agent_error`.
    `cancelled` is not an error."""
    if not error:
        return None
    kind = str(error.get("type") or "")
    if kind == "cancelled":
        return None
    if will_retry is False and attempt > 1:
        return "retry_exhausted"
    if kind in ("timeout", "validation"):
        return kind
    return "agent_error"


def step_log(
    logger: logging.Logger,
    *,
    run_id: str,
    step_id: str,
    attempt: int,
    executor: str,
    duration_ms: float,
    status: str,
    error_type: str | None = None,
    **extra: Any,
) -> None:
    """One record per step execution (PRD 5.2): INFO when it succeeded, WARNING otherwise."""
    if error_type is not None and error_type not in ERROR_TYPES:
        raise ValueError(f"error_type must be one of {sorted(ERROR_TYPES)}, got {error_type!r}")
    fields: dict[str, Any] = {
        "run_id": run_id, "step_id": step_id, "attempt": attempt, "executor": executor,
        "duration_ms": round(float(duration_ms), 3), "status": status, "error_type": error_type,
        **{k: v for k, v in extra.items() if k not in _RESERVED},
    }
    ok = status.lower() in ("succeeded", "success", "ok", "completed")
    msg = f"step {step_id} attempt {attempt} {status} in {fields['duration_ms']:.1f} ms"
    if error_type:
        msg += f" ({error_type})"
    logger.log(logging.INFO if ok else logging.WARNING, msg, extra=fields)
