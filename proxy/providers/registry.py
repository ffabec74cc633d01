"""Provider type -> adapter class. A new wire format is one module and one line here."""

from __future__ import annotations

import importlib
from typing import Any

_TYPES: dict[str, str] = {
    "openai": "proxy.providers.openai:OpenAIProvider",
    "mock": "proxy.providers.mock:MockProvider",
    "gemini": "proxy.providers.gemini:GeminiProvider",
    "anthropic": "proxy.providers.anthropic:AnthropicProvider",
    "ollama": "proxy.providers.ollama:OllamaProvider",
    "azure": "proxy.providers.azure:AzureProvider",
    "openrouter": "proxy.providers.openrouter:OpenRouterProvider",
    "bedrock": "proxy.providers.bedrock:BedrockProvider",
}


def provider_types() -> frozenset[str]:
    return frozenset(_TYPES)


def provider_class(ptype: str) -> Any:
    module, _, name = _TYPES[ptype].partition(":")
    return getattr(importlib.import_module(module), name)
