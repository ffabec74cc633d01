"""Prometheus metrics, one CollectorRegistry per app (never the global one, so many apps can coexist).

Request metrics are fed from the gateway's finished-call observer, attempt metrics from the router's
attempt hook. Gauges that belong to other parts (provider health, breaker state, budget utilisation) are
set through the small `set_*` methods below, which those parts call.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from proxy.context import ChatCall
from proxy.telemetry import facts

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)
TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30)
BREAKER_STATES = {"closed": 0, "half_open": 1, "open": 2}
OTHER = "other"        # label for model names that are not configured: clients cannot blow up cardinality


class Metrics:
    def __init__(self, models: Iterable[str] = (), namespace: str = "llm") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = frozenset(models)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        r, ns = self.registry, namespace
        by_call = ("model", "provider", "status")
        self.requests = Counter("requests", "Requests finished, by model, provider and HTTP status.",
                                by_call, namespace=ns, registry=r)
        self.latency = Histogram("request_duration_seconds", "Request latency to the last byte.",
                                 by_call, namespace=ns, registry=r, buckets=LATENCY_BUCKETS)
        self.ttft = Histogram("time_to_first_token_seconds", "Streams: time until the first byte went out.",
                              ("model", "provider"), namespace=ns, registry=r, buckets=TTFT_BUCKETS)
        self.tokens = Counter("tokens", "Tokens, by type: input, output, cached_input.",
                              ("model", "provider", "type"), namespace=ns, registry=r)
        self.cost = Counter("cost_usd", "Spend in US dollars.", ("model", "provider"), namespace=ns, registry=r)
        self.cache = Counter("cache_requests", "Response cache lookups, by result (hit, miss, ...).",
                             ("result",), namespace=ns, registry=r)
        self.errors = Counter("request_errors", "Requests answered with an error, by status and error code.",
                              ("status", "code"), namespace=ns, registry=r)
        self.rejections = Counter("rejections", "Requests refused before any provider was called.",
                                  ("reason",), namespace=ns, registry=r)
        self.attempts = Counter("upstream_attempts", "Upstream attempts, by provider and outcome (ok or code).",
                                ("provider", "outcome"), namespace=ns, registry=r)
        self.budget = Gauge("budget_utilization_ratio", "Spend divided by limit, per budget.",
                            ("budget",), namespace=ns, registry=r)
        self.inflight = Gauge("inflight_requests", "Requests in the pipeline or streaming.", namespace=ns,
                              registry=r)
        self.streams = Gauge("inflight_streams", "Streams currently being relayed.", namespace=ns, registry=r)
        ProcessCollector(registry=r)       # process_resident_memory_bytes, cpu, open fds
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- fed by the pipeline wrapper / observer / attempt hook ----------------------------------------

    def started(self, call: ChatCall) -> None:
        self.inflight.inc()
        call.extras["telemetry.inflight"] = True

    def stream_started(self, call: ChatCall) -> None:
        self.streams.inc()
        call.extras["telemetry.stream"] = True

    def finished(self, call: ChatCall, latency: float) -> None:
        extras = call.extras
        if extras.pop("telemetry.inflight", False):
            self.inflight.dec()
        if extras.pop("telemetry.stream", False):
            self.streams.dec()
        model = call.model if call.model in self.models else OTHER
        provider = facts.provider_of(call) or "none"
        status = facts.status(call)
        st = str(status)
        self._child(self.requests, model, provider, st).inc()
        self._child(self.latency, model, provider, st).observe(latency)
        ttft = facts.ttft_seconds(call)
        if ttft is not None:
            self._child(self.ttft, model, provider).observe(ttft)
        u = call.usage
        if u is not None:
            if u.prompt_tokens:
                self._child(self.tokens, model, provider, "input").inc(u.prompt_tokens)
            if u.completion_tokens:
                self._child(self.tokens, model, provider, "output").inc(u.completion_tokens)
            if u.cached_tokens:
                self._child(self.tokens, model, provider, "cached_input").inc(u.cached_tokens)
        cost = facts.cost(call)
        if cost:
            self._child(self.cost, model, provider).inc(cost)
        cache = facts.cache_status(call)
        if cache is not None:
            self._child(self.cache, cache).inc()
        if status >= 400 or call.error:
            code = facts.error_code(call) or "error"
            self._child(self.errors, st, code).inc()
            reason = facts.REJECTIONS.get(code)
            if reason is not None and not call.attempts:
                self._child(self.rejections, reason).inc()

    def attempt(self, provider: str, outcome: str) -> None:
        self._child(self.attempts, provider, outcome).inc()

    def _child(self, metric: Any, *labels: str) -> Any:
        """`metric.labels(...)` memoised: label sets are few (configured models, providers, statuses),
        and skipping prometheus_client's validation and lock saves most of the per-request cost."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- for other parts of the gateway ---------------------------------------------------------------

    def watch_health(self, health: Any) -> None:
        """Expose the router's health (breakers, probes) as gauges, read at scrape time."""
        if health is not None and callable(getattr(health, "snapshot", None)):
            self.registry.register(HealthCollector(health))

    def set_budget_utilisation(self, budget: str, ratio: float) -> None:
        self.budget.labels(budget).set(ratio)


class HealthCollector(Collector):
    """Provider probe results and per-target breaker state from `routing.health.Health.snapshot()`."""

    def __init__(self, health: Any) -> None:
        self.health = health

    def describe(self) -> list[Metric]:
        return []       # names are fixed but values appear only once the router has seen targets

    def collect(self) -> Iterator[Metric]:
        snap = self.health.snapshot()
        up = GaugeMetricFamily("llm_provider_up", "1 if the provider's last active health check passed, else 0.",
                               labels=["provider"])
        for name, info in (snap.get("providers") or {}).items():
            up.add_metric([str(name)], 1.0 if isinstance(info, dict) and info.get("healthy") else 0.0)
        labels = ["provider", "model"]
        state = GaugeMetricFamily("llm_target_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open.",
                                  labels=labels)
        inflight = GaugeMetricFamily("llm_target_inflight", "Attempts in flight to the target.", labels=labels)
        ewma = GaugeMetricFamily("llm_target_latency_ewma_seconds", "Smoothed time to first byte.", labels=labels)
        errors = CounterMetricFamily("llm_target_errors", "Failed attempts counted by the breaker.", labels=labels)
        for key, t in (snap.get("targets") or {}).items():
            provider, _, model = str(key).partition("/")
            lv = [provider, model]
            state.add_metric(lv, float(BREAKER_STATES.get(str(t.get("state")), 2)))
            inflight.add_metric(lv, float(t.get("inflight") or 0))
            ewma.add_metric(lv, float(t.get("latency_ewma_ms") or 0) / 1000)
            errors.add_metric(lv, float(t.get("errors") or 0))
        yield from (up, state, inflight, ewma, errors)
