"""Tracing settings (`telemetry.tracing` merged with OTEL_* variables) and the W3C traceparent parser."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

import msgspec

from proxy.config import TracingConfig

_TRACEPARENT = re.compile(r"^\s*([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?\s*$")
_ZERO_TRACE, _ZERO_SPAN = "0" * 32, "0" * 16


class TracingSettings(msgspec.Struct, frozen=True, kw_only=True):
    """`telemetry.tracing` merged with the standard OTEL_* variables (config wins)."""

    endpoint: str          # "" means: let the exporter read OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT itself
    protocol: str
    service_name: str
    sample_ratio: float
    record_content: bool
    headers: dict[str, str]
    max_queue_size: int
    export_timeout: float


def resolve(cfg: TracingConfig, env: Mapping[str, str] | None = None) -> TracingSettings | None:
    """None when tracing is off: no endpoint anywhere, OTEL_SDK_DISABLED, or OTEL_TRACES_EXPORTER=none."""
    env = os.environ if env is None else env
    if env.get("OTEL_SDK_DISABLED", "").lower() == "true" or env.get("OTEL_TRACES_EXPORTER", "") == "none":
        return None
    if not (cfg.endpoint or env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or env.get("OTEL_EXPORTER_OTLP_ENDPOINT")):
        return None
    protocol = (cfg.protocol or env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
                or env.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "http/protobuf")
    ratio = cfg.sample_ratio
    if ratio is None:
        sampler = env.get("OTEL_TRACES_SAMPLER", "")
        ratio = 0.0 if sampler in ("always_off", "parentbased_always_off") else 1.0
        if sampler in ("traceidratio", "parentbased_traceidratio"):
            try:
                ratio = float(env.get("OTEL_TRACES_SAMPLER_ARG", "1"))
            except ValueError:
                ratio = 1.0
    return TracingSettings(
        endpoint=cfg.endpoint, protocol="grpc" if protocol == "grpc" else "http/protobuf",
        service_name=cfg.service_name or env.get("OTEL_SERVICE_NAME") or "llm-service",
        sample_ratio=min(max(ratio, 0.0), 1.0), record_content=cfg.record_content, headers=dict(cfg.headers),
        max_queue_size=max(cfg.max_queue_size, 1), export_timeout=cfg.export_timeout)


def parse_traceparent(value: str) -> tuple[str, int, bool] | None:
    """(trace id hex, parent span id, sampled) from a W3C traceparent; None when it is not valid."""
    m = _TRACEPARENT.match(value)
    if m is None:
        return None
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return trace_id, int(span_id, 16), bool(int(flags, 16) & 1)
