"""config.yaml -> frozen msgspec Structs. `${VAR}` / `${VAR:-default}` are read from the environment.

Every error names the field path, e.g. `models[1].targets[0].provider: unknown provider 'opnai'`.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml


class ConfigError(Exception):
    """A config problem, phrased as `path: what is wrong`."""


class Timeouts(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    connect: float = 5.0       # TCP + TLS connect
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


class StorageConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    database: str = "sqlite:///data/llm-service.db"
    redis: str = ""


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
    weight: float = 1.0
    context_window: int | None = None


class ModelConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    name: str
    targets: list[Target]


class Config(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    server: ServerConfig = ServerConfig()
    storage: StorageConfig = StorageConfig()
    providers: dict[str, ProviderConfig] = {}
    models: list[ModelConfig] = []


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
    providers: dict[str, dict[str, Any]] = {}
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
        providers[str(name)] = common
    raw = {**raw, "providers": providers}
    cfg: Config = _convert(raw, Config, "")
    _check_models(cfg)
    return cfg


def _check_models(cfg: Config) -> None:
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if m.name in seen:
            raise ConfigError(f"models[{i}].name: duplicate model name {m.name!r}")
        seen.add(m.name)
        if not m.targets:
            raise ConfigError(f"models[{i}].targets: at least one target is required")
        for j, t in enumerate(m.targets):
            if t.provider not in cfg.providers:
                raise ConfigError(f"models[{i}].targets[{j}].provider: unknown provider {t.provider!r}")
            if t.weight < 0:
                raise ConfigError(f"models[{i}].targets[{j}].weight: must be >= 0")
    if not 0 < cfg.server.port < 65536:
        raise ConfigError("server.port: must be between 1 and 65535")
    if cfg.server.max_body_bytes <= 0:
        raise ConfigError("server.max_body_bytes: must be positive")


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
