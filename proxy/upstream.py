"""The upstream client: the only network I/O to providers. One pooled ClientSession per provider."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping
from typing import Protocol

import aiohttp
from yarl import URL

from proxy.config import ProviderConfig, Timeouts
from proxy.errors import UpstreamError, UpstreamTimeout
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


class HttpResponse:
    __slots__ = ("_resp", "headers", "status")

    def __init__(self, resp: aiohttp.ClientResponse) -> None:
        self._resp = resp
        self.status: int = resp.status
        self.headers: Mapping[str, str] = resp.headers

    async def read(self) -> bytes:
        try:
            return await self._resp.read()
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamError(f"upstream connection failed while reading: {type(e).__name__}") from None
        finally:
            self._resp.release()

    async def iter_chunks(self) -> AsyncIterator[bytes]:
        try:
            async for data in self._resp.content.iter_any():
                yield data
        except (aiohttp.ClientError, ConnectionError) as e:
            raise UpstreamError(f"upstream stream broke: {type(e).__name__}") from None

    def release(self) -> None:
        # close(), not release(): a half-read stream must not go back to the pool.
        if not self._resp.closed:
            self._resp.close()


class HttpTransport:
    """aiohttp session with a pooled connector. Timeouts per phase are enforced by the router's clock;
    the session itself only bounds the TCP connect."""

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.timeouts: Timeouts = config.timeouts
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(limit=self.config.max_connections, limit_per_host=0,
                                         ttl_dns_cache=300, enable_cleanup_closed=True)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.timeouts.connect,
                                        connect=self.timeouts.connect)
        self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=True,
                                              skip_auto_headers=("User-Agent",), trust_env=False)
        return self._session

    async def send(self, wire: WireRequest) -> HttpResponse:
        session = self._session or self._open()
        try:
            # raw_url: stop yarl from re-quoting (it would turn a signed `%3A` back into `:`).
            url = URL(wire.url, encoded=True) if wire.raw_url else wire.url
            resp = await session.request(wire.method, url, data=wire.body, headers=wire.headers,
                                         allow_redirects=False)
        except aiohttp.ServerTimeoutError:
            raise UpstreamTimeout(f"provider '{self.config.name}': connect timed out") from None
        except (aiohttp.ClientError, ConnectionError, OSError) as e:
            raise UpstreamError(f"provider '{self.config.name}': connection failed ({type(e).__name__})") from None
        return HttpResponse(resp)

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
