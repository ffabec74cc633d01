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

from proxy.config_checks import ConfigError as ConfigError  # re-exported: callers catch it from here
from proxy.config_checks import check
from proxy.config_checks import in_memory as in_memory
from proxy.cost.config import AccountingConfig, BudgetsConfig, PriceConfig

_NonNeg = Annotated[float, msgspec.Meta(ge=0)]
_Positive = Annotated[float, msgspec.Meta(gt=0)]
_Bytes = Annotated[int, msgspec.Meta(ge=0)]
_Count = Annotated[int, msgspec.Meta(ge=0)]
_PosInt = Annotated[int, msgspec.Meta(ge=1)]


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    connect: _Positive = 5.0       # TCP + TLS connect
    pool: _Positive = 10.0         # waiting for one of max_connections; past it 503 server_overloaded (ours)
    first_byte: _Positive = 60.0   # request sent -> response headers (and first stream chunk)
    idle: _Positive = 60.0         # gap between two stream chunks
    total: _Positive = 600.0       # whole request, stream included


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
    dev_key_file: str = "data/dev-master-key"   # no master_key: the dev key is kept here (0600); "" = never written
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
    max_connections: int = 1024            # 1,000 concurrent streams to one provider without a pool wait
    unsupported_params: Literal["drop", "reject"] = "drop"
    settings: Any = None
    # Set by the loader, never in YAML: the ${VAR} that `api_key` names when it resolved empty for a type
    # that needs a key. Start-up warns once; a call routed here gets 502 provider_key_missing.
    api_key_missing: str = ""


class Target(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    provider: str
    model: str
    weight: float = 1.0                 # share among targets of equal priority (strategy: weighted)
    priority: int | None = None         # lower is tried first; default: the target's position in the list
    context_window: int | None = None   # a context-length error falls back only to a larger window
    ttft_timeout: _Positive | None = None   # seconds to the first byte before failing over (default: provider's)
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
    failures: Annotated[int, msgspec.Meta(ge=1)] = 5   # consecutive failures that open a target's circuit
    cooldown: _NonNeg = 30.0            # seconds it stays open before one half-open probe


class RetryBudget(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Envoy's retry budget: retries in flight to a target are capped at a share of its calls in flight."""

    ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.2   # share of the target's calls in flight that may be retrying
    min_retries: _Bytes = 3   # retries always allowed at once, however few calls are in flight


class RoutingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    retries: _Count = 1                 # extra tries on the same target (connection errors, 5xx), with backoff
    backoff_base: _NonNeg = 0.05        # seconds; exponential with full jitter
    backoff_max: _NonNeg = 2.0
    breaker: BreakerConfig = BreakerConfig()
    retry_budget: RetryBudget = RetryBudget()
    health_check_interval: _NonNeg = 0.0   # seconds between active provider health checks; 0 = off
    drain_seconds: _NonNeg = 30.0       # on SIGTERM, how long in-flight requests may finish
    rate_limit_wait: _NonNeg = 5.0      # longest wait for a target cooling down after an upstream 429


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
    # heuristic: chars/4 (at least one per word), no tables | bytes: one per UTF-8 byte, a true bound;
    # auto: the former BPE setting, now the heuristic (tables never load on the request path)
    tokenizer: Literal["heuristic", "bytes", "auto"] = "heuristic"
    tokenizer_max_chars: int = 8000         # longer prompts skip the word count (bounded CPU)
    prefix: str = "llm:rl:"                 # Redis key prefix
    redis_timeout: float = 0.1              # seconds per Redis round trip before the failure policy applies
    breaker_cooldown: float = 2.0           # after a Redis failure, skip Redis for this long
    concurrency_lease: float = 900.0        # seconds a crashed replica's concurrency slot stays taken


class GraphQLConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """The GraphQL API at /graphql (proxy/api/graphql/). strawberry is imported on the route's first use."""

    enabled: bool = True
    introspection: bool = True                      # __schema / __type queries (still depth-limited)
    max_depth: Annotated[int, msgspec.Meta(ge=1)] = 10          # nesting of selections, fragments expanded
    max_aliases: Annotated[int, msgspec.Meta(ge=0)] = 15        # aliased fields in one document
    max_page_size: Annotated[int, msgspec.Meta(ge=1)] = 100     # largest `first` of a connection
    max_subscriptions: Annotated[int, msgspec.Meta(ge=1)] = 10  # operations open at once on one WebSocket
    connection_init_timeout: _Positive = 10.0       # seconds a WebSocket may wait before connection_init
    graphiql: bool = False                          # serve the GraphiQL page on GET /graphql from a browser


class JobsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Async jobs and batch lines: stored in the ledger, run by workers in every gateway process."""

    enabled: bool = True
    concurrency: int = 8                # jobs and batch lines in flight at once, per process
    lease_seconds: float = 30.0         # a claimed job/line whose worker died is retried after this
    poll_interval: float = 0.5          # seconds between looks for new work when idle
    result_ttl: float = 86400.0         # seconds a finished job's result is kept
    retry_after: int = 1                # the Retry-After a 202 answer carries
    batch_share: float = 0.5            # share of jobs.concurrency and of every rate limit batch lines may take


class BatchesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """OpenAI's Batch API, run by the gateway for every provider (/v1/files, /v1/batches)."""

    max_lines: int = 50_000             # lines in one input file
    max_file_bytes: int = 200 * 1024 * 1024
    progress_interval: float = 1.0      # seconds between request_counts updates while lines run
    rate_limit_pause: float = 1.0       # seconds a line refused by a rate limit waits before its retry
    budget_pause: float = 30.0          # seconds a batch whose budget ran out waits before trying again
    discount: dict[str, float] = {}     # model (public name, or "*") -> share taken off a batch line's price


class WebhooksConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Job completion webhooks (Standard Webhooks format)."""

    allow_hosts: list[str] = []         # host names or IPs, optional :port; nothing else is called
    secret: str = ""                    # whsec_... (base64); empty: webhooks are refused
    max_attempts: int = 8
    backoff_base: float = 1.0           # seconds before the first retry; doubles each time
    backoff_max: float = 3600.0
    timeout: float = 10.0               # seconds per delivery attempt


class UIConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True            # the dashboard and playground at /ui (static files; data via the REST API)


class ResponsesConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Stored responses (`store: true`) for `previous_response_id` and GET/DELETE /v1/responses/{id}: in the
    ledger (shared by replicas on PostgreSQL), or the kv store (Redis when storage.redis is set, else in
    process memory, lost on restart)."""
    store: Literal["ledger", "kv"] = "ledger"
    store_ttl: _Positive = 30 * 86400.0         # seconds a stored response is kept (OpenAI keeps 30 days)
    max_bytes: Annotated[int, msgspec.Meta(ge=1)] = 64 * 1024 * 1024   # the in-memory store's bound (LRU)
    prefix: str = "llm:responses:"              # Redis key prefix
    websocket_idle: _Positive = 300.0           # WebSocket mode: seconds without a message before closing
    websocket_max: _Positive = 3600.0           # WebSocket mode: a connection's cap (OpenAI's is 60 minutes)
    websocket_heartbeat: _Positive = 30.0       # WebSocket mode: ping interval (a pong is expected)


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
    graphql: GraphQLConfig = GraphQLConfig()
    jobs: JobsConfig = JobsConfig()
    batches: BatchesConfig = BatchesConfig()
    webhooks: WebhooksConfig = WebhooksConfig()
    ui: UIConfig = UIConfig()
    responses: ResponsesConfig = ResponsesConfig()


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
            bound = re.match(r"Expected `(?:int|float)` (>=|>|<=|<) (\S+)$", what)
            if bound:       # "Expected `float` >= 0.0" -> "must be >= 0"
                what = f"must be {bound.group(1)} {bound.group(2).removesuffix('.0')}"
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


def _try(problems: list[str], raw: Any, typ: type, prefix: str) -> Any:
    """_convert, with its problem added to `problems` (and None returned) instead of raised."""
    try:
        return _convert(raw, typ, prefix)
    except ConfigError as e:
        problems.extend(e.problems)
        return None


def parse(raw: Any, env: dict[str, str] | None = None) -> Config:
    """Validate a decoded YAML document into a Config, or raise ConfigError with every problem found:
    each provider and each top-level section is checked on its own, then the cross-field rules."""
    if raw is None:
        raise ConfigError("<root>: the file is empty (expected at least `providers:` and `models:`)")
    if not isinstance(raw, dict):
        raise ConfigError("<root>: expected a mapping")
    env = dict(os.environ) if env is None else env
    raw_providers = raw.get("providers")
    raw = interpolate(raw, env)
    providers_raw = raw.get("providers") or {}
    if not isinstance(providers_raw, dict):
        raise ConfigError("providers: expected a mapping of name -> provider")
    problems: list[str] = []
    providers: dict[str, ProviderConfig] = {}
    for name, p in providers_raw.items():
        pc = _provider(str(name), p, (raw_providers or {}).get(name), problems)
        if pc is not None:
            providers[str(name)] = pc
    sections: dict[str, Any] = {}
    for key, value in raw.items():
        if key != "providers" and _try(problems, {key: value}, Config, "") is not None:
            sections[key] = value
    # Models one by one, so a bad entry does not hide the cross-checks (names, providers) of the others.
    index = list(range(len(sections.get("models") or [])))
    if "models" not in sections and isinstance(raw.get("models"), list):
        good = [(i, _try([], m, ModelConfig, "")) for i, m in enumerate(raw["models"])]
        index = [i for i, m in good if m is not None]
        sections["models"] = [m for _, m in good if m is not None]
    cfg: Config = _convert({**sections, "providers": providers}, Config, "")
    check(cfg, {str(n) for n in providers_raw}, index, problems)
    if problems:
        raise ConfigError(*problems)
    return cfg


def _provider(name: str, p: Any, original: Any, problems: list[str]) -> ProviderConfig | None:
    from proxy.providers.registry import provider_class, provider_types

    where = f"providers.{name}"
    if not isinstance(p, dict):
        problems.append(f"{where}: expected a mapping")
        return None
    ptype = p.get("type")
    if ptype is None:
        problems.append(f"{where}.type: required field is missing")
        return None
    if ptype not in provider_types():
        problems.append(f"{where}.type: unknown provider type {ptype!r} "
                        f"(one of: {', '.join(sorted(provider_types()))})")
        return None
    base_url = p.get("base_url")
    if isinstance(base_url, str) and base_url and not re.match(r"https?://[^/\s]", base_url):
        problems.append(f"{where}.base_url: must start with http:// or https:// (got {base_url!r})")
    common = {k: v for k, v in p.items() if k in COMMON_PROVIDER_FIELDS}
    rest = {k: v for k, v in p.items() if k not in COMMON_PROVIDER_FIELDS}
    cls = provider_class(ptype)
    common["settings"] = _try(problems, rest, cls.Settings, where)
    common["name"] = name
    key_source = original.get("api_key") if isinstance(original, dict) else None
    if (not p.get("api_key") and isinstance(key_source, str) and not getattr(cls, "api_key_optional", False)
            and (names := _VAR.findall(key_source))):
        common["api_key_missing"] = ", ".join(n for n, _ in names)
    pc = _try(problems, common, ProviderConfig, where)
    return pc if common["settings"] is not None else None


def resolve_paths(cfg: Config, folder: Path) -> Config:
    """Relative files (a SQLite ledger, the dev key) are relative to the config file's folder, not the
    working directory, so `serve` and `keys` started from anywhere use the same ones."""
    storage, server = cfg.storage, cfg.server
    db = storage.database
    rest = db.removeprefix("sqlite://")
    if db.startswith("sqlite://") and not in_memory(db) and rest.startswith("/") and not rest.startswith("//"):
        storage = msgspec.structs.replace(storage, database=f"sqlite:///{(folder / rest[1:]).resolve()}")
    if server.dev_key_file and not Path(server.dev_key_file).is_absolute():
        server = msgspec.structs.replace(server, dev_key_file=str((folder / server.dev_key_file).resolve()))
    return msgspec.structs.replace(cfg, storage=storage, server=server)


def sqlite_file(database: str) -> str | None:
    """The file a `sqlite:///...` ledger lives in, for the start-up line; None for memory or PostgreSQL."""
    if not database.startswith("sqlite://") or in_memory(database):
        return None
    return database.removeprefix("sqlite://")[1:]


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
    return resolve_paths(parse(raw, env), Path(path).parent)
