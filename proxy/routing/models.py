"""Model names as clients send them -> configured model entries: aliases, `name@version`, default versions."""

from __future__ import annotations

import logging

from proxy.config import ModelConfig
from proxy.errors import ModelNotFound

log = logging.getLogger("proxy.routing")


class ModelCatalog:
    def __init__(self, models: list[ModelConfig]) -> None:
        self._exact: dict[str, ModelConfig] = {}
        by_name: dict[str, list[ModelConfig]] = {}
        for m in models:
            by_name.setdefault(m.name, []).append(m)
            if m.version:
                self._exact[f"{m.name}@{m.version}"] = m
        for name, entries in by_name.items():
            default = next((m for m in entries if m.default), None)
            if default is None:
                # Unversioned entry first, else the highest version string (dates sort correctly).
                plain = [m for m in entries if not m.version]
                default = plain[0] if plain else max(entries, key=lambda m: m.version)
            self._exact[name] = default
        for m in models:
            for alias in m.aliases:
                self._exact.setdefault(alias, m)
        self._warned: set[str] = set()

    def names(self) -> list[str]:
        return list(self._exact)

    def __contains__(self, name: str) -> bool:
        return name in self._exact

    def __iter__(self):
        return iter(self._exact)

    def resolve(self, name: str) -> ModelConfig:
        model = self._exact.get(name)
        if model is None:
            raise ModelNotFound(f"The model '{name}' does not exist or you do not have access to it.",
                                param="model")
        if model.deprecated and name not in self._warned:
            self._warned.add(name)
            log.warning("model %r is deprecated: %s", name, model.deprecated)
        return model
