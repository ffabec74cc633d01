"""The provider protocols. Adapters are pure translators: they never do network I/O themselves.

`to_wire` turns the OpenAI-shaped request into the provider's HTTP request; `from_wire` turns its answer
back into OpenAI JSON bytes plus usage; `new_stream` returns a per-request translator that takes raw
upstream bytes (SSE, NDJSON, AWS event-stream, whatever the provider speaks) and returns OpenAI SSE bytes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import msgspec

from proxy.context import ChatCall, Usage
from proxy.errors import UpstreamError

if TYPE_CHECKING:
    from proxy.config import ProviderConfig, Target


class WireRequest(msgspec.Struct, kw_only=True):
    method: str = "POST"
    url: str
    headers: dict[str, str] = {}
    body: bytes | None = None
    dropped: list[str] = []        # request params not sent because the target does not accept them
    raw_url: bool = False          # url is percent-encoded exactly as it must be sent (SigV4 signs the path)
    native: bool = False           # the client's own protocol passed through: the reply is not OpenAI chat


class NoSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class StreamTranslator(Protocol):
    """Per request, stateful, never shared. Output is OpenAI SSE, ending with `data: [DONE]`."""

    usage: Usage | None

    def feed(self, data: bytes) -> bytes:
        """Raw upstream bytes in (any split), OpenAI SSE bytes out (maybe b""). Raises UpstreamError
        for an error the provider reported inside the stream."""
        ...

    def finish(self) -> bytes:
        """Upstream reached EOF: flush what is left. Raises UpstreamError if the stream was cut short."""
        ...


class Provider(Protocol):
    Settings: ClassVar[type[msgspec.Struct]]
    transport: ClassVar[str]           # "http", or "mock" for the in-process provider
    # Optional class attribute `api_key_optional = True`: an api_key naming an unset ${VAR} is not a
    # missing key for this type (bedrock signs with AWS credentials; mock needs none).
    config: ProviderConfig

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest: ...

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]: ...

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError: ...

    def new_stream(self, call: ChatCall, target: Target) -> StreamTranslator: ...

    def health_request(self) -> WireRequest | None:
        """A cheap request (list models or similar) whose 2xx answer means the provider is up."""
        ...

    # Optional: `async def prepare(self, target, transport) -> None`, awaited by the router before
    # `to_wire`, for adapters that need cached upstream facts (OpenRouter's supported parameters).
    # Embeddings: `call.endpoint == "embeddings"` in to_wire/from_wire; body holds `model` and `input`.


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from `Retry-After` (or `retry-after-ms`), if the provider sent one."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return float(ms) / 1000.0
        except ValueError:
            pass
    ra = headers.get("retry-after")
    if ra:
        try:
            return float(ra)
        except ValueError:
            return None
    return None
