"""One Backend per configured provider: its adapter plus its transport (pooled HTTP, or in-process)."""

from __future__ import annotations

from dataclasses import dataclass

from proxy.config import Config, ProviderConfig
from proxy.providers.base import Provider
from proxy.providers.registry import provider_class
from proxy.upstream import HttpTransport, Transport


@dataclass(slots=True)
class Backend:
    name: str
    config: ProviderConfig
    provider: Provider
    transport: Transport


def build_backends(config: Config) -> dict[str, Backend]:
    out: dict[str, Backend] = {}
    for name, pc in config.providers.items():
        adapter = provider_class(pc.type)(pc)
        transport: Transport
        if adapter.transport == "mock":
            from proxy.providers.mock import MockTransport
            transport = MockTransport(pc)
        else:
            transport = HttpTransport(pc, config.server.max_upstream_response_bytes)
        out[name] = Backend(name, pc, adapter, transport)
    return out
