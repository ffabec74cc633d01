"""Prometheus metrics, one CollectorRegistry per app (never the global one, so many apps can coexist).

Request metrics are fed from the gateway's finished-call observer, attempt metrics from the router's
attempt hook. They are plain dicts of label tuples to numbers, updated on the event loop without locks
(prometheus_client's own metric objects take a lock and validate labels on every update: ~8 µs a
request); `RequestCollector` turns them into metric families only when /metrics is scraped. Gauges of
other parts (provider health, breaker state, budget utilisation) are read or set the same way.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
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


INFLIGHT, STREAM = 1, 2        # call.gauged: which in-flight gauges this call moved up


class Counts:
    """A counter (or gauge) family: label values -> number."""

    __slots__ = ("doc", "gauge", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...] = (), gauge: bool = False) -> None:
        self.name, self.doc, self.labels, self.gauge = name, doc, labels, gauge
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], amount: float = 1.0) -> None:
        v = self.values
        v[key] = v.get(key, 0.0) + amount

    def family(self) -> Metric:
        fam = (GaugeMetricFamily if self.gauge else CounterMetricFamily)(self.name, self.doc, labels=self.labels)
        for key, value in self.values.items():
            fam.add_metric(list(key), value)
        return fam


class Buckets:
    """A histogram family: label values -> [count per bucket ..., count above the last, sum]."""

    __slots__ = ("bounds", "doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]) -> None:
        self.name, self.doc, self.labels, self.bounds = name, doc, labels, bounds
        self.values: dict[tuple[str, ...], list[float]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        row = self.values.get(key)
        if row is None:
            row = self.values[key] = [0.0] * (len(self.bounds) + 2)
        row[bisect_left(self.bounds, value)] += 1        # the first bucket whose bound is >= value (le)
        row[-1] += value

    def family(self) -> Metric:
        fam = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        for key, row in self.values.items():
            cumulative, total = [], 0.0
            for bound, n in zip((*map(str, self.bounds), "+Inf"), row[:-1], strict=True):
                total += n
                cumulative.append((bound, total))
            fam.add_metric(list(key), cumulative, sum_value=row[-1])
        return fam


class Metrics:
    def __init__(self, models: Iterable[str] = (), namespace: str = "llm") -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.models = frozenset(models)
        ns = namespace + "_"
        by_call = ("model", "provider", "status")
        self.requests = Counts(ns + "requests", "Requests finished, by model, provider and HTTP status.", by_call)
        self.latency = Buckets(ns + "request_duration_seconds", "Request latency to the last byte.", by_call,
                               LATENCY_BUCKETS)
        self.ttft = Buckets(ns + "time_to_first_token_seconds", "Streams: time until the first byte went out.",
                            ("model", "provider"), TTFT_BUCKETS)
        self.tokens = Counts(ns + "tokens", "Tokens, by type: input, output, cached_input.",
                             ("model", "provider", "type"))
        self.cost = Counts(ns + "cost_usd", "Spend in US dollars.", ("model", "provider"))
        self.cache = Counts(ns + "cache_requests", "Response cache lookups, by result (hit, miss, ...).", ("result",))
        self.errors = Counts(ns + "request_errors", "Requests answered with an error, by status and error code.",
                             ("status", "code"))
        self.rejections = Counts(ns + "rejections", "Requests refused before any provider was called.", ("reason",))
        self.attempts = Counts(ns + "upstream_attempts", "Upstream attempts, by provider and outcome (ok or code).",
                               ("provider", "outcome"))
        self.budget = Counts(ns + "budget_utilization_ratio", "Spend divided by limit, per budget.", ("budget",),
                             gauge=True)
        self.inflight = Counts(ns + "inflight_requests", "Requests in the pipeline or streaming.", gauge=True)
        self.streams = Counts(ns + "inflight_streams", "Streams currently being relayed.", gauge=True)
        self.inflight.values[()] = self.streams.values[()] = 0.0
        r = self.registry
        r.register(RequestCollector([self.requests, self.latency, self.ttft, self.tokens, self.cost, self.cache,
                                     self.errors, self.rejections, self.attempts, self.budget, self.inflight,
                                     self.streams]))
        ProcessCollector(registry=r)       # process_resident_memory_bytes, cpu, open fds
        PlatformCollector(registry=r)
        GCCollector(registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    # -- fed by the pipeline wrapper / observer / attempt hook ----------------------------------------

    def started(self, call: ChatCall) -> None:
        self.inflight.values[()] += 1
        call.gauged |= INFLIGHT

    def stream_started(self, call: ChatCall) -> None:
        self.streams.values[()] += 1
        call.gauged |= STREAM

    def finished(self, call: ChatCall, latency: float, o: facts.Outcome | None = None) -> None:
        gauged, call.gauged = call.gauged, 0
        if gauged & INFLIGHT:
            self.inflight.values[()] -= 1
        if gauged & STREAM:
            self.streams.values[()] -= 1
        if o is None:
            o = facts.outcome(call)
        model = call.model if call.model in self.models else OTHER
        provider = o.provider or "none"
        status = o.status
        st = str(status)
        key = (model, provider, st)
        self.requests.inc(key)
        self.latency.observe(key, latency)
        ttft = o.ttft
        if ttft is not None:
            self.ttft.observe((model, provider), ttft)
        u = call.usage
        if u is not None:
            tokens = self.tokens
            if u.prompt_tokens:
                tokens.inc((model, provider, "input"), u.prompt_tokens)
            if u.completion_tokens:
                tokens.inc((model, provider, "output"), u.completion_tokens)
            if u.cached_tokens:
                tokens.inc((model, provider, "cached_input"), u.cached_tokens)
        cost = o.cost
        if cost:
            self.cost.inc((model, provider), cost)
        cache = o.cache
        if cache is not None:
            self.cache.inc((cache,))
        if status >= 400 or call.error:
            code = o.error_code or "error"
            self.errors.inc((st, code))
            reason = facts.REJECTIONS.get(code)
            if reason is not None and not call.attempts:
                self.rejections.inc((reason,))

    def attempt(self, provider: str, outcome: str) -> None:
        self.attempts.inc((provider, outcome))

    # -- for other parts of the gateway ---------------------------------------------------------------

    def watch_health(self, health: Any) -> None:
        """Expose the router's health (breakers, probes) as gauges, read at scrape time."""
        if health is not None and callable(getattr(health, "snapshot", None)):
            self.registry.register(HealthCollector(health))

    def watch_tracing(self, tracing: Any) -> None:
        """Spans the exporter had to drop (a slow or unreachable collector), read at scrape time."""
        if tracing is not None:
            self.registry.register(_SpansDropped(tracing))

    def set_budget_utilisation(self, budget: str, ratio: float) -> None:
        self.budget.values[(budget,)] = ratio


class RequestCollector(Collector):
    """The request metrics' families, made at scrape time from the plain counts."""

    def __init__(self, families: list[Counts | Buckets]) -> None:
        self.families = families

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        for f in self.families:
            yield f.family()


class _SpansDropped(Collector):
    def __init__(self, tracing: Any) -> None:
        self.tracing = tracing

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        yield CounterMetricFamily("llm_trace_spans_dropped", "Spans dropped instead of exported (the collector "
                                  "was slow or unreachable); requests never wait for an export.",
                                  value=float(self.tracing.dropped))


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
