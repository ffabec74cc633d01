"""config.yaml -> frozen msgspec Structs. `${VAR}` / `${VAR:-default}` are read from the environment.

Every error names the field path, e.g. `models[1].targets[0].provider: unknown provider 'opnai'`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import yaml

from proxy.cost.config import AccountingConfig, BudgetsConfig, PriceConfig


class ConfigError(Exception):
    """A config problem, phrased as `path: what is wrong`."""


_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Positive = Annotated[float, msgspec.Meta(gt=0)]
_Bytes = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    connect: float = 5.0       # TCP + TLS connect
    pool: _Positive = 10.0     # waiting for one of max_connections; past it 503 server_overloaded (ours)
    first_byte: float = 60.0   # request sent -> response headers (and first stream chunk)
    idle: float = 60.0         # gap between two stream chunks
    total: float = 600.0       # whole request, stream included


class ServerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    host: str = "127.0.0.1"
    port: int = 8080
    master_key: str = ""
    max_body_bytes: int = 4 * 1024 * 1024
    max_header_bytes: int = 16 * 1024
    cors_origins: list[str] = []
    log_level: str = "info"
    secret: str = ""               # HMAC key for stored key hashes; empty: plain SHA-256
    write_timeout: float = 60.0    # seconds one write to a client may wait (a reader that stopped reading)
    header_timeout: _Positive = 60.0   # connection open (or last answer sent) -> request headers complete
    body_timeout: _Positive = 60.0     # headers complete -> request body complete; past it 408
    max_upstream_response_bytes: _PosInt = 32 * 1024 * 1024   # a non-streamed body, or one stream line/event
    max_output_tokens: _PosInt = 262_144   # cap on a request's max_tokens / max_completion_tokens
    auth_failures_per_minute: _Bytes = 20   # bad keys from one client address before 429; 0 = unlimited


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    database: str = "sqlite:///data/llm-service.db"
    redis: str = ""
    key_cache_ttl: float = 0.5     # seconds a key lookup is cached; a revoke reaches every replica within it


class CacheConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The response cache (proxy/pipeline/cache.py). Off unless a request opts in, by default."""

    enabled: bool = True
    mode: Literal["all", "opt_in"] = "opt_in"   # all: cache unless a request says `cache: false`
    ttl: _NonNeg = 3600.0                       # seconds an entry lives unless the request says otherwise
    max_ttl: _NonNeg = 86400.0                  # cap on a request's max-age / x-llm-cache-ttl
    max_bytes: _Bytes = 64 * 1024 * 1024        # in-memory backend: LRU bound on stored bytes
    max_entry_bytes: _Bytes = 4 * 1024 * 1024   # larger answers are not stored
    compress_over_bytes: _Bytes = 2048          # zlib-compress stored values larger than this
    namespace: Literal["tenant", "key", "shared"] = "tenant"   # who may see whose entries
    prefix: str = "llm:cache:"                  # Redis key prefix
    redis_timeout: _Positive = 0.25             # seconds per Redis operation before the cache misses
    breaker_cooldown: _NonNeg = 5.0             # after a Redis failure, skip Redis for this long


class TracingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OTLP traces. Off unless an endpoint is set here or in OTEL_EXPORTER_OTLP_(TRACES_)ENDPOINT."""

    endpoint: str = ""                  # e.g. http://jaeger:4318 (OTLP/HTTP) or http://jaeger:4317 (gRPC)
    protocol: Literal["", "http/protobuf", "grpc"] = ""   # empty: OTEL_EXPORTER_OTLP_PROTOCOL, else http
    service_name: str = ""              # empty: OTEL_SERVICE_NAME, else llm-service
    sample_ratio: float | None = None   # None: OTEL_TRACES_SAMPLER_ARG, else 1.0 (parent-based)
    record_content: bool = False        # put prompts and completions on spans (off: never recorded)
    headers: dict[str, str] = {}        # sent to the collector, e.g. an auth header
    max_queue_size: int = 32768         # spans waiting for export; more are dropped, never waited for
    export_timeout: float = 10.0        # seconds per export batch


class MetricsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """GET /metrics: open to `allow_from` networks, else the master key or `key` is required."""

    enabled: bool = True
    key: str = ""                                        # a scrape-only key (the master key also works)
    allow_from: tuple[str, ...] = ("127.0.0.1/32", "::1/128")   # networks that may scrape without a key


class LogsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    format: Literal["json", "text"] = "json"
    level: str = ""                     # empty: server.log_level
    access_log: bool = True             # one JSON line per request on the `proxy.access` logger


class TelemetryConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    tracing: TracingConfig = TracingConfig()
    metrics: MetricsConfig = MetricsConfig()
    logs: LogsConfig = LogsConfig()


COMMON_PROVIDER_FIELDS = frozenset(
    {"type", "base_url", "api_key", "headers", "timeouts", "max_connections", "unsupported_params"})


class ProviderConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Fields every provider has; type-specific ones are in `settings`, checked by the provider's own Struct."""

    name: str
    type: str
    base_url: str = ""
    api_key: str = ""
    headers: dict[str, str] = {}
    timeouts: Timeouts = Timeouts()
    max_connections: int = 256
    unsupported_params: Literal["drop", "reject"] = "drop"
    settings: Any = None


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: str
    model: str
    weight: float = 1.0                 # share among targets of equal priority (strategy: weighted)
    priority: int | None = None         # lower is tried first; default: the target's position in the list
    context_window: int | None = None   # a context-length error falls back only to a larger window
    ttft_timeout: float | None = None   # seconds to the first byte before failing over (default: provider's)
    price: PriceConfig | None = None    # USD per million tokens for this target (beats models[].price)


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    targets: list[Target]
    version: str = ""                   # this entry is `name@version`
    default: bool = False               # `name` without @version resolves to this entry
    aliases: list[str] = []             # other names clients may send
    deprecated: str = ""                # logged (once per process) and sent as x-llm-deprecated when used
    strategy: Literal["weighted", "least_inflight", "latency", "cost", "ordered"] = "weighted"
    price: PriceConfig | None = None    # USD per million tokens; overrides proxy/data/prices.yaml
    fallbacks: list[str] = []           # other public models tried after these targets (the key must allow them)


class BreakerConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    failures: int = 5                   # consecutive failures that open a target's circuit
    cooldown: float = 30.0              # seconds it stays open before one half-open probe


class RetryBudget(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Envoy's retry budget: retries in flight to a target are capped at a share of its calls in flight."""

    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2   # share of the target's calls in flight that may be retrying
    min_retries: _Bytes = 3   # retries always allowed at once, however few calls are in flight


class RoutingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    retries: int = 1                    # extra tries on the same target (connection errors, 5xx), with backoff
    backoff_base: float = 0.05          # seconds; exponential with full jitter
    backoff_max: float = 2.0
    breaker: BreakerConfig = BreakerConfig()
    retry_budget: RetryBudget = RetryBudget()
    health_check_interval: float = 0.0  # seconds between active provider health checks; 0 = off
    drain_seconds: float = 30.0         # on SIGTERM, how long in-flight requests may finish
    rate_limit_wait: float = 5.0        # longest wait for a target cooling down after an upstream 429


class LimitRule(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """One level's limits (proxy/limits). None: that dimension is not limited at this level."""

    rpm: int | None = None              # requests per minute (refilled continuously, GCRA)
    tpm: int | None = None              # tokens per minute: estimate reserved before, settled to usage after
    max_concurrency: int | None = None  # requests in flight at once (streams until their last byte)
    priority_reserve: float = 0.0       # share of each limit only high-priority requests may use
    failure: Literal["fail_open", "fail_closed"] = "fail_open"   # when the shared store (Redis) is down


class LimitsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Rate limits and quotas: every applicable level is checked and taken in one atomic step."""

    enabled: bool = True
    global_: LimitRule | None = msgspec.field(default=None, name="global")
    providers: dict[str, LimitRule] = {}    # provider of the first target the router will try
    models: dict[str, LimitRule] = {}       # configured model name (aliases count as their model)
    sources: dict[str, LimitRule] = {}      # a key's source_id; "*" applies to every source separately
    keys: LimitRule = LimitRule()           # defaults for virtual keys that set none; reserve and failure
    master: LimitRule | None = None         # the master key is unlimited at key level unless set
    priority_threshold: int = 1             # metadata.priority / x-llm-priority >= this is high priority
    default_max_tokens: int = 1024          # completion tokens reserved when a request sets no max_tokens
    tokenizer: Literal["auto", "heuristic"] = "auto"   # auto: BPE tables for known OpenAI models
    tokenizer_max_chars: int = 8000         # longer prompts use the chars/4 heuristic (bounded CPU)
    prefix: str = "llm:rl:"                 # Redis key prefix
    redis_timeout: float = 0.1              # seconds per Redis round trip before the failure policy applies
    breaker_cooldown: float = 2.0           # after a Redis failure, skip Redis for this long
    concurrency_lease: float = 900.0        # seconds a crashed replica's concurrency slot stays taken


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    cache: CacheConfig = CacheConfig()
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []
    routing: RoutingConfig = RoutingConfig()
    telemetry: TelemetryConfig = TelemetryConfig()
    accounting: AccountingConfig = AccountingConfig()
    budgets: BudgetsConfig = BudgetsConfig()
    limits: LimitsConfig = LimitsConfig()


_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def interpolate(value: Any, env: dict[str, str], path: str = "") -> Any:
    if isinstance(value, str):
        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            if name in env and (env[name] != "" or default is None):
                return env[name]
            if default is not None:
                return default
            raise ConfigError(f"{path or '<root>'}: environment variable {name} is not set "
                              f"(use ${{{name}:-default}} for an optional one)")
        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: interpolate(v, env, f"{path}.{k}" if path else str(k)) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, f"{path}[{i}]") for i, v in enumerate(value)]
    return value


def _path(msgspec_path: str, prefix: str = "") -> str:
    p = msgspec_path.removeprefix("$").lstrip(".")
    return f"{prefix}.{p}".strip(".").replace(".[", "[") if prefix else p


def _convert(raw: Any, typ: type, prefix: str) -> Any:
    try:
        return msgspec.convert(raw, typ, strict=False)
    except msgspec.ValidationError as e:
        msg = str(e)
        m = re.match(r"(.*?) - at `([^`]*)`$", msg)
        if m:
            what, where = m.group(1), m.group(2)
            fld = re.match(r"Object contains unknown field `([^`]*)`", what)
            if fld:
                return _raise(f"{_path(where, prefix)}.{fld.group(1)}".lstrip("."), "unknown field")
            missing = re.match(r"Object missing required field `([^`]*)`", what)
            if missing:
                return _raise(f"{_path(where, prefix)}.{missing.group(1)}".lstrip("."), "required field is missing")
            return _raise(_path(where, prefix) or prefix, what)
        fld = re.match(r"Object contains unknown field `([^`]*)`", msg)
        if fld:
            return _raise(f"{prefix}.{fld.group(1)}".lstrip("."), "unknown field")
        missing = re.match(r"Object missing required field `([^`]*)`", msg)
        if missing:
            return _raise(f"{prefix}.{missing.group(1)}".lstrip("."), "required field is missing")
        return _raise(prefix or "<root>", msg)


def _raise(path: str, what: str) -> Any:
    raise ConfigError(f"{path}: {what}")


def parse(raw: Any, env: dict[str, str] | None = None) -> Config:
    """Validate a decoded YAML document into a Config, or raise ConfigError naming the first bad field."""
    from proxy.providers.registry import provider_class, provider_types

    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("<root>: expected a mapping")
    raw = interpolate(raw, dict(os.environ) if env is None else env)
    providers_raw = raw.get("providers") or {}
    if not isinstance(providers_raw, dict):
        raise ConfigError("providers: expected a mapping of name -> provider")
    providers: dict[str, ProviderConfig] = {}
    for name, p in providers_raw.items():
        where = f"providers.{name}"
        if not isinstance(p, dict):
            raise ConfigError(f"{where}: expected a mapping")
        ptype = p.get("type")
        if ptype is None:
            raise ConfigError(f"{where}.type: required field is missing")
        if ptype not in provider_types():
            raise ConfigError(f"{where}.type: unknown provider type {ptype!r} "
                              f"(one of: {', '.join(sorted(provider_types()))})")
        common = {k: v for k, v in p.items() if k in COMMON_PROVIDER_FIELDS}
        rest = {k: v for k, v in p.items() if k not in COMMON_PROVIDER_FIELDS}
        cls = provider_class(ptype)
        common["settings"] = _convert(rest, cls.Settings, where)
        common["name"] = str(name)
        providers[str(name)] = _convert(common, ProviderConfig, where)
    raw = {**raw, "providers": providers}
    cfg: Config = _convert(raw, Config, "")
    _check_models(cfg)
    _check_limits(cfg.limits)
    _check_telemetry(cfg)
    return cfg


def _check_limits(lim: LimitsConfig) -> None:
    rules: list[tuple[str, LimitRule | None]] = [("limits.global", lim.global_), ("limits.keys", lim.keys),
                                                 ("limits.master", lim.master)]
    for section in ("providers", "models", "sources"):
        rules += [(f"limits.{section}.{n}", r) for n, r in getattr(lim, section).items()]
    for where, r in rules:
        if r is None:
            continue
        for f in ("rpm", "tpm", "max_concurrency"):
            v = getattr(r, f)
            if v is not None and v < 1:
                raise ConfigError(f"{where}.{f}: must be at least 1 (leave it out for no limit)")
        if not 0 <= r.priority_reserve < 1:
            raise ConfigError(f"{where}.priority_reserve: must be between 0 and 1 (exclusive)")
    if lim.redis_timeout <= 0 or lim.breaker_cooldown < 0:
        raise ConfigError("limits.redis_timeout: must be positive (and breaker_cooldown not negative)")


def _check_models(cfg: Config) -> None:
    seen: set[str] = set()
    defaults: set[str] = set()
    for i, m in enumerate(cfg.models):
        full = f"{m.name}@{m.version}" if m.version else m.name
        if full in seen:
            raise ConfigError(f"models[{i}].name: duplicate model name {full!r}")
        seen.add(full)
        if "@" in m.name:
            raise ConfigError(f"models[{i}].name: '@' is reserved for versions (use `version:`)")
        if m.default:
            if m.name in defaults:
                raise ConfigError(f"models[{i}].default: {m.name!r} already has a default version")
            defaults.add(m.name)
        if not m.targets:
            raise ConfigError(f"models[{i}].targets: at least one target is required")
        for j, t in enumerate(m.targets):
            if t.provider not in cfg.providers:
                raise ConfigError(f"models[{i}].targets[{j}].provider: unknown provider {t.provider!r}")
            if t.weight < 0:
                raise ConfigError(f"models[{i}].targets[{j}].weight: must be >= 0")
    public = seen | {m.name for m in cfg.models} | {a for m in cfg.models for a in m.aliases}
    for i, m in enumerate(cfg.models):
        for j, fb in enumerate(m.fallbacks):
            if fb not in public:
                raise ConfigError(f"models[{i}].fallbacks[{j}]: unknown model {fb!r}")
    if not 0 < cfg.server.port < 65536:
        raise ConfigError("server.port: must be between 1 and 65535")
    if cfg.server.max_body_bytes <= 0:
        raise ConfigError("server.max_body_bytes: must be positive")
    if not 0 <= cfg.storage.key_cache_ttl <= 60:
        raise ConfigError("storage.key_cache_ttl: must be between 0 and 60 seconds")
    if not cfg.storage.database.startswith(("sqlite://", "postgresql://", "postgres://")):
        raise ConfigError("storage.database: expected sqlite:///path.db, sqlite://:memory: or postgresql://...")
    if cfg.accounting.writer == "process" and in_memory(cfg.storage.database):
        raise ConfigError("accounting.writer: process needs a ledger another process can open "
                          "(a SQLite file or PostgreSQL), not an in-memory SQLite database")


def in_memory(database: str) -> bool:
    return database.startswith("sqlite:") and database.removeprefix("sqlite://").lstrip("/") == ":memory:"


_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


def _check_telemetry(cfg: Config) -> None:
    import ipaddress

    t = cfg.telemetry
    ratio = t.tracing.sample_ratio
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        raise ConfigError("telemetry.tracing.sample_ratio: must be between 0 and 1")
    for i, net in enumerate(t.metrics.allow_from):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            raise ConfigError(f"telemetry.metrics.allow_from[{i}]: not an IP network: {net!r}") from None
    for where, level in (("server.log_level", cfg.server.log_level), ("telemetry.logs.level", t.logs.level)):
        if level and level.lower() not in _LEVELS:
            raise ConfigError(f"{where}: must be one of {', '.join(_LEVELS)}")


def load(path: str | Path, env: dict[str, str] | None = None) -> Config:
    try:
        text = Path(path).read_text()
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror})") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    return parse(raw, env)
