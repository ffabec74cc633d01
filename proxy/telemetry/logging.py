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


# The access line's fields that can hold free text (from a client or an upstream); the rest are ids,
# numbers and words we wrote ourselves, so redacting them would only cost time (~10 regexes a field).
FREE_TEXT = ("error", "model")


class RedactFilter(logging.Filter):
    """For handlers that do not use our formatters: rewrites the record's message, masked."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.name == ACCESS.name:
            return True                        # a constant message; its fields are masked by the formatter
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
            if record.name == ACCESS.name:
                out.update(fields)
                for k in FREE_TEXT:
                    if isinstance(v := fields.get(k), str):
                        out[k] = redact(v)
            else:
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


class BatchedHandler(logging.StreamHandler):
    """One write for many lines: at thousands of access lines a second, a write (and flush) a line was a
    system call per request. Lines wait until 64 KiB gather or `flush()` runs (the server calls it every
    0.1 s, and logging calls it at exit); a warning or worse goes out at once, with what waited."""

    def __init__(self, stream: IO[str], limit: int = 64 * 1024) -> None:
        super().__init__(stream)
        self._lines: list[str] = []
        self._size = 0
        self._limit = limit

    def emit(self, record: logging.LogRecord) -> None:        # called under the handler's lock
        try:
            line = self.format(record)
        except Exception:
            self.handleError(record)
            return
        self._lines.append(line)
        self._size += len(line) + 1
        if record.levelno >= logging.WARNING or self._size >= self._limit:
            self.flush()

    def flush(self) -> None:
        with self.lock:                        # type: ignore[union-attr]
            if not self._lines:
                return
            data = "\n".join(self._lines) + "\n"
            self._lines.clear()
            self._size = 0
            try:
                self.stream.write(data)
                self.stream.flush()
            except Exception:
                pass                           # a closed stderr must not break the server


def setup_logging(level: str = "info", fmt: str = "json", stream: IO[str] | None = None,
                  batch: bool = False) -> logging.Handler:
    """Replace the root handlers with one that writes `fmt` lines to `stream` (stderr by default);
    `batch`: lines are written in batches (the server flushes them every 0.1 s)."""
    handler: logging.StreamHandler = (BatchedHandler(stream or sys.stderr) if batch
                                      else logging.StreamHandler(stream or sys.stderr))
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
