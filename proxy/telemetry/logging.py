"""Structured logs: a JSON formatter (orjson), secret redaction on every line, and the access line.

Redaction runs on every message, field and traceback our handler writes, whatever logger or library
produced it, so a key that slips into an exception message or a third-party log call is still masked.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

import orjson

from proxy.context import ChatCall
from proxy.redact import redact
from proxy.telemetry import facts

ACCESS = logging.getLogger("proxy.access")


class RedactFilter(logging.Filter):
    """For handlers that do not use our formatters: rewrites the record's message, masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        clean = redact(msg)
        if clean != msg:
            record.msg, record.args = clean, None
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg, the record's `fields` dict, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": redact(record.getMessage()),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            # Values are masked before encoding: masking the JSON text could eat an escape sequence.
            out.update({k: redact(v) if isinstance(v, str) else v for k, v in fields.items()})
        if record.exc_info:
            out["exc"] = redact(self.formatException(record.exc_info))
        return orjson.dumps(out, default=lambda o: redact(str(o))).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            line += " " + " ".join(f"{k}={v}" for k, v in fields.items() if v is not None)
        return redact(line)


def setup_logging(level: str = "info", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Replace the root handlers with one that writes `fmt` lines to `stream` (stderr by default)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(RedactFilter())
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    root.addHandler(handler)
    root.setLevel(level.upper())
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    return handler


def access_fields(call: ChatCall, latency: float, o: facts.Outcome | None = None) -> dict[str, Any]:
    """The access line's fields. Never the credential, the prompt or the completion."""
    u = call.usage
    if o is None:
        o = facts.outcome(call)
    ttft = o.ttft
    return {
        "request_id": call.request_id,
        "key_id": o.key_id,
        "ingress": call.ingress,
        "endpoint": call.endpoint,
        "model": call.model,
        "provider": o.provider or None,
        "upstream_model": o.upstream_model or None,
        "stream": call.stream,
        "status": o.status,
        "latency_ms": round(latency * 1000, 2),
        "ttft_ms": round(ttft * 1000, 2) if ttft is not None else None,
        "attempts": call.attempts,
        "prompt_tokens": u.prompt_tokens if u else None,
        "completion_tokens": u.completion_tokens if u else None,
        "total_tokens": (u.total_tokens or u.prompt_tokens + u.completion_tokens) if u else None,
        "cost": o.cost,
        "cache": o.cache,
        "error": call.error,
        "error_code": o.error_code,
        "ended_by": call.ended_by,
    }


def log_access(call: ChatCall, latency: float, o: facts.Outcome | None = None) -> None:
    if ACCESS.isEnabledFor(logging.INFO):
        ACCESS.info("request", extra={"fields": access_fields(call, latency, o)})
