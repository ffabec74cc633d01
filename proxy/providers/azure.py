"""Azure OpenAI: OpenAI's wire format behind per-deployment URLs, an `api-version` query and an `api-key` header.

Everything but the URL, the auth header and a few error codes is OpenAIProvider's: bodies pass through with
unknown fields intact and streams are relayed byte for byte (Azure's `prompt_filter_results`,
`content_filter_results` and `finish_reason: "content_filter"` reach the client unchanged).
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import quote

import msgspec

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall
from proxy.errors import UpstreamError, upstream_error_for_status
from proxy.providers.base import WireRequest
from proxy.providers.openai import OpenAIProvider, OpenAISettings, openai_error


class AzureSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    api_version: str = "2024-10-21"
    deployment: str = ""           # empty: the target's `model` is the deployment name
    auth: Literal["api-key", "bearer"] = "api-key"   # bearer: `api_key` holds a Microsoft Entra ID token
    stream_usage: bool = True      # ask for a usage chunk (stream_options; api-version 2024-09-01-preview and later)


class AzureProvider(OpenAIProvider):
    Settings = AzureSettings  # type: ignore[assignment]

    def __init__(self, config: ProviderConfig) -> None:
        super().__init__(config)
        self.azure: AzureSettings = config.settings
        self.settings = OpenAISettings(stream_usage=self.azure.stream_usage)
        base = config.base_url.rstrip("/")
        self.base = base[:-len("/openai")] if base.endswith("/openai") else base
        self.query = "?api-version=" + quote(self.azure.api_version, safe="")
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:
            if self.azure.auth == "bearer":
                self.headers["Authorization"] = f"Bearer {config.api_key}"
            else:
                self.headers["api-key"] = config.api_key

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        wire = super().to_wire(call, target)    # the body as OpenAI's; Azure ignores its `model`
        deployment = quote(self.azure.deployment or target.model, safe="")
        op = call.endpoint if call.endpoint in ("embeddings", "completions") else "chat/completions"
        wire.url = f"{self.base}/openai/deployments/{deployment}/{op}{self.query}"
        return wire

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        """OpenAI's envelope, except that Azure puts the HTTP status in `code` ("429", "401") and says
        `DeploymentNotFound`: those become the codes OpenAI's clients know. `content_filter` stays."""
        err = openai_error(self.config.name, status, body, headers)
        if err.code == "DeploymentNotFound":
            err.code = "model_not_found"
        elif err.code is not None and err.code.isdigit():
            err.code = upstream_error_for_status(status, "").code
        return err

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url=f"{self.base}/openai/models{self.query}", headers=self.headers)

