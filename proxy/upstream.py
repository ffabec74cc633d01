"""The upstream client: the only network I/O to providers. One pooled ClientSession per provider.

Two limits live here because only the transport sees them: the size of what a provider sends (a body, or
one line of a stream, over `max_response_bytes` is refused and its connection closed, never buffered), and
the wait for one of the pool's `max_connections` (past `timeouts.pool`, 503 `server_overloaded`: our
capacity, not the provider's health).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from proxy.config import ProviderConfig, Timeouts
from proxy.errors import Unavailable, UpstreamError, UpstreamTimeout
from proxy.providers.base import WireRequest


class UpstreamResponse(Protocol):
    status: int
    headers: Mapping[str, str]

    async def read(self) -> bytes: ...

    def iter_chunks(self) -> AsyncIterator[bytes]: ...

    def release(self) -> None: ...


class Transport(Protocol):
    async def send(self, wire: WireRequest) -> UpstreamResponse: ...

    async def close(self) -> None: ...


def too_large(limit: int, what: str) -> UpstreamError:
    return UpstreamError(f"the provider sent {what} larger than the gateway's limit of {limit} bytes",
                         status=502, code="upstream_response_too_large", retryable=False)


class HttpResponse:
    __slots__ = ("_limit", "_resp", "_slot", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse, limit: int, slot: asyncio.Semaphore | None) -> None:
        self._resp = resp
        self._limit = limit
        self._slot = slot               # the pool place this response holds until it is released
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        resp, limit = self._resp, self._limit
        try:
            size = resp.content_length
            if size is not None and size > limit:
                raise too_large(limit, f"a body of {size} bytes,")
            if size is not None and "Content-Encoding" not in resp.headers:
                body = await resp.content.read()      # bounded by its length: no counting loop needed
            else:                                      # chunked, or decompressed past its declared length
                parts: list[bytes] = []
                total = 0
                async for part in resp.content.iter_any():
                    total += len(part)
                    if total > limit:
                        raise too_large(limit, "a body")
                    parts.append(part)
                body = parts[0] if len(parts) == 1 else b"".join(parts)
        except (aiohttp.ClientError, ConnectionError) as e:
            self.release()
            raise UpstreamError(f"upstream connection failed while reading: {type(e).__name__}") from None
        except BaseException:
            self.release()              # closed, not pooled: the rest of an oversized body is never read
            raise
        resp.release()                  # read to the end: the connection goes back to the pool
        self._free()
        return body

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        # A stream's unit is the line (SSE, NDJSON); one that grows past the limit is refused. Per chunk
        # this is one rfind from the end, which a chunk ending in a newline answers at once.
        limit = self._limit
        pending = 0                     # bytes since the last newline
        try:
            async for data in self._resp.content.iter_any():
                nl = data.rfind(b"\n")
                pending = pending + len(data) if nl < 0 else len(data) - nl - 1
                if pending > limit:
                    raise too_large(limit, "a stream event")
                yield data
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamError(f"upstream stream broke: {type(e).__name__}") from None

    def release(self) -> None:
        # close(), not release(): a half-read stream must not go back to the pool.
        if not self._resp.closed:
            self._resp.close()
        self._free()

    def _free(self) -> None:
        if self._slot is not None:
            self._slot.release()
            self._slot = None


class HttpTransport:
    """aiohttp session with a pooled connector. Timeouts per phase are enforced by the router's clock;
    the session itself only bounds the TCP connect."""

    def __init__(self, config: ProviderConfig, max_response_bytes: int = 32 * 1024 * 1024) -> None:
        self.config = config
        self.timeouts: Timeouts = config.timeouts
        self.max_response_bytes = max_response_bytes
        self._session: aiohttp.ClientSession | None = None
        # Places in the pool, taken before aiohttp's connector (same size) so a wait for one is ours to time.
        self._slots = asyncio.Semaphore(config.max_connections) if config.max_connections > 0 else None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0,
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect,
                                        connect=self.timeouts.connect)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                              skip_auto_headers=("User-Agent",), trust_env=False)
        return self._session

    async def _take_slot(self) -> None:
        slots = self._slots
        assert slots is not None
        if not slots.locked():
            await slots.acquire()             # a free place: no wait, no timer
            return
        try:
            async with asyncio.timeout(self.timeouts.pool):
                await slots.acquire()
        except TimeoutError:
            wait = max(1, math.ceil(self.timeouts.pool))
            raise Unavailable(f"The gateway is at capacity for provider '{self.config.name}' "
                              f"({self.config.max_connections} connections busy); retry shortly.",
                              code="server_overloaded", headers={"retry-after": str(wait)}) from None

    async def send(self, wire: WireRequest) -> HttpResponse:
        session = self._session or self._open()
        if self._slots is not None:
            await self._take_slot()
        try:
            # raw_url: stop yarl from re-quoting (it would turn a signed `%3A` back into `:`).
            url = URL(wire.url, encoded=True) if wire.raw_url else wire.url
            resp = await session.request(wire.method, url, data=wire.body, headers=wire.headers,
                                         allow_redirects=False)
        except BaseException as e:
            if self._slots is not None:
                self._slots.release()
            if isinstance(e, aiohttp.ServerTimeoutError):
                raise UpstreamTimeout(f"provider '{self.config.name}': connect timed out") from None
            if isinstance(e, aiohttp.ClientError | ConnectionError | OSError):
                raise UpstreamError(f"provider '{self.config.name}': connection failed "
                                    f"({type(e).__name__})") from None
            raise
        return HttpResponse(resp, self.max_response_bytes, self._slots)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


async def read_with_timeout(resp: UpstreamResponse, seconds: float, provider: str) -> bytes:
    try:
        async with asyncio.timeout(seconds):
            return await resp.read()
    except TimeoutError:
        resp.release()
        raise UpstreamTimeout(f"provider '{provider}': timed out reading the response") from None
