"""What a Config must also satisfy beyond its field types: each check adds `path: what is wrong` lines.

Kept apart from proxy/config.py (the Structs and the loader) so every problem in a file is reported at
once, by `check-config` and at start-up alike, instead of the first one and then the next on the next run.
proxy/config.py imports this module (and re-exports ConfigError), never the other way round.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from proxy.config import Config, LimitRule, LimitsConfig

_LEVELS = ("debug", "info", "warning", "warn", "error", "critical")


class ConfigError(Exception):
    """Config problems, each phrased as `path: what is wrong`; str() is one line per problem."""

    def __init__(self, *problems: str) -> None:
        super().__init__("\n".join(problems))
        self.problems = list(problems)


def in_memory(database: str) -> bool:
    return database.startswith("sqlite:") and database.removeprefix("sqlite://").lstrip("/") == ":memory:"


def check(cfg: Config, provider_names: set[str], index: list[int], problems: list[str]) -> None:
    """`provider_names`: every provider the file declares, broken ones too (so one typo is one line);
    `index`: each of cfg.models' position in the file (entries that failed to parse are left out)."""
    _check_models(cfg, provider_names, index, problems)
    _check_server(cfg, problems)
    _check_limits(cfg.limits, provider_names, problems)
    _check_telemetry(cfg, problems)
    _check_jobs(cfg, problems)


def _check_jobs(cfg: Config, problems: list[str]) -> None:
    import base64
    import binascii

    j, w = cfg.jobs, cfg.webhooks
    if j.concurrency < 1:
        problems.append("jobs.concurrency: must be at least 1")
    if j.lease_seconds <= 0:
        problems.append("jobs.lease_seconds: must be positive")
    if j.poll_interval <= 0:
        problems.append("jobs.poll_interval: must be positive")
    if not 0 < j.batch_share <= 1:
        problems.append("jobs.batch_share: must be above 0 and at most 1")
    for model, d in cfg.batches.discount.items():
        if not 0 <= d <= 1:
            problems.append(f"batches.discount.{model}: must be between 0 and 1 (0.5 = half price)")
    if w.max_attempts < 1:
        problems.append("webhooks.max_attempts: must be at least 1")
    if w.backoff_base < 0 or w.timeout <= 0:
        problems.append("webhooks.backoff_base: must not be negative (and webhooks.timeout positive)")
    if w.secret:
        try:
            base64.b64decode(w.secret.removeprefix("whsec_"), validate=True)
        except binascii.Error:
            problems.append("webhooks.secret: expected whsec_ followed by base64")


def _check_models(cfg: Config, provider_names: set[str], index: list[int], problems: list[str]) -> None:
    seen: dict[str, str] = {}          # every name a client may send -> where it was declared
    defaults: set[str] = set()
    for i, m in zip(index, cfg.models, strict=True):
        full = f"{m.name}@{m.version}" if m.version else m.name
        if full in seen:
            problems.append(f"models[{i}].name: duplicate model name {full!r} (also {seen[full]})")
        seen.setdefault(full, f"models[{i}].name")
        if "@" in m.name:
            problems.append(f"models[{i}].name: '@' is reserved for versions (use `version:`)")
        if m.default:
            if m.name in defaults:
                problems.append(f"models[{i}].default: {m.name!r} already has a default version")
            defaults.add(m.name)
        if not m.targets:
            problems.append(f"models[{i}].targets: at least one target is required")
        for j, t in enumerate(m.targets):
            if t.provider not in provider_names:
                problems.append(f"models[{i}].targets[{j}].provider: unknown provider {t.provider!r}")
            if t.weight < 0:
                problems.append(f"models[{i}].targets[{j}].weight: must be >= 0")
    public = set(seen) | {m.name for m in cfg.models} | {a for m in cfg.models for a in m.aliases}
    for i, m in zip(index, cfg.models, strict=True):
        for j, fb in enumerate(m.fallbacks):
            if fb not in public:
                problems.append(f"models[{i}].fallbacks[{j}]: unknown model {fb!r}")
    taken = set(seen) | {m.name for m in cfg.models}
    aliases: dict[str, str] = {}
    for i, m in zip(index, cfg.models, strict=True):
        for k, alias in enumerate(m.aliases):
            if alias in taken and alias != m.name:
                problems.append(f"models[{i}].aliases[{k}]: {alias!r} is already a model name")
            elif alias in aliases:
                problems.append(f"models[{i}].aliases[{k}]: duplicate alias {alias!r} (also {aliases[alias]})")
            aliases.setdefault(alias, f"models[{i}].aliases[{k}]")


def _check_server(cfg: Config, problems: list[str]) -> None:

    if not 0 <= cfg.server.port < 65536:      # 0: an ephemeral port, printed at start
        problems.append("server.port: must be between 0 and 65535")
    if cfg.server.max_body_bytes <= 0:
        problems.append("server.max_body_bytes: must be positive")
    if not 0 <= cfg.storage.key_cache_ttl <= 60:
        problems.append("storage.key_cache_ttl: must be between 0 and 60 seconds")
    if not cfg.storage.database.startswith(("sqlite://", "postgresql://", "postgres://")):
        problems.append("storage.database: expected sqlite:///path.db, sqlite://:memory: or postgresql://...")
    elif cfg.accounting.writer == "process" and in_memory(cfg.storage.database):
        problems.append("accounting.writer: process needs a ledger another process can open "
                        "(a SQLite file or PostgreSQL), not an in-memory SQLite database")


def _check_limits(lim: LimitsConfig, provider_names: set[str], problems: list[str]) -> None:
    rules: list[tuple[str, LimitRule | None]] = [("limits.global", lim.global_), ("limits.keys", lim.keys),
                                                 ("limits.master", lim.master)]
    for section in ("providers", "models", "sources"):
        rules += [(f"limits.{section}.{n}", r) for n, r in getattr(lim, section).items()]
    for name in lim.providers:
        if name not in provider_names:
            problems.append(f"limits.providers.{name}: unknown provider {name!r}")
    for where, r in rules:
        if r is None:
            continue
        for f in ("rpm", "tpm", "max_concurrency"):
            v = getattr(r, f)
            if v is not None and v < 1:
                problems.append(f"{where}.{f}: must be at least 1 (leave it out for no limit)")
        if not 0 <= r.priority_reserve < 1:
            problems.append(f"{where}.priority_reserve: must be between 0 and 1 (exclusive)")
    if lim.redis_timeout <= 0:
        problems.append("limits.redis_timeout: must be positive")
    if lim.breaker_cooldown < 0:
        problems.append("limits.breaker_cooldown: must not be negative")


def _check_telemetry(cfg: Config, problems: list[str]) -> None:
    t = cfg.telemetry
    ratio = t.tracing.sample_ratio
    if ratio is not None and not 0.0 <= ratio <= 1.0:
        problems.append("telemetry.tracing.sample_ratio: must be between 0 and 1")
    for i, net in enumerate(t.metrics.allow_from):
        try:
            ipaddress.ip_network(net, strict=False)
        except ValueError:
            problems.append(f"telemetry.metrics.allow_from[{i}]: not an IP network: {net!r}")
    for where, level in (("server.log_level", cfg.server.log_level), ("telemetry.logs.level", t.logs.level)):
        if level and level.lower() not in _LEVELS:
            problems.append(f"{where}: must be one of {', '.join(_LEVELS)}")


def adapter_problems(cfg: Config) -> list[str]:
    """What building each provider's adapter would refuse at start-up (a bad regex, a missing library)."""
    from proxy.providers.registry import provider_class

    problems: list[str] = []
    for pc in cfg.providers.values():
        try:
            provider_class(pc.type)(pc)
        except ConfigError as e:
            problems.extend(e.problems)
    return problems


def key_warnings(cfg: Config) -> list[str]:
    """One line per provider whose api_key names an unset variable: its calls will get 502."""
    return [f"provider '{name}' has no API key: {pc.api_key_missing} is not set (providers.{name}.api_key); "
            f"calls routed to it fail with 502 provider_key_missing"
            for name, pc in cfg.providers.items() if pc.api_key_missing]
