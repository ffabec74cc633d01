"""Serving a call over HTTP: begin it, run the pipeline, write the Reply (JSON in one piece, or SSE relayed
chunk by chunk), and end it exactly once, whatever ended it (see proxy/gateway.py)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from aiohttp import web

from proxy.api.http import CORS_HEADERS
from proxy.context import CLIENT_CLOSED, CLIENT_GONE, DRAIN, WRITE_STALL, ChatCall, Reply
from proxy.errors import ProxyError, ShuttingDown
from proxy.gateway import GATEWAY
from proxy.streaming.chunks import DONE

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EventStream(web.StreamResponse):
    """An SSE answer whose status line and headers leave with its first event, in one write (as
    aiohttp's Response sends them with its body): the pipeline hands over a stream whose first chunk is
    already here, so nothing waits for them, and a stream saves one send (a syscall and a wake-up of
    the client: ~4% of a short stream's CPU)."""

    _send_headers_immediately = False


def carry_headers(call: ChatCall, e: ProxyError) -> None:
    """The headers a stage asked every answer to carry (`call.error_headers`) go on an error too."""
    if call.error_headers:
        for k, v in call.error_headers.items():
            e.headers.setdefault(k, v)


def failed(call: ChatCall, e: ProxyError) -> None:
    call.status, call.error, call.error_code = e.status, e.message, e.code


Render = Callable[[ChatCall, Reply], Reply]


async def serve_call(request: web.Request, call: ChatCall, render: Render | None = None) -> web.StreamResponse:
    """The HTTP half of every REST ingress. Errors raised here reach the error middleware (the envelope).
    `render` turns the pipeline's reply into the client's protocol (an ingress codec), if it differs."""
    gw = request.app[GATEWAY]
    gw.begin(call)
    try:
        reply = await gw.pipeline(call)
        if render is not None:
            reply = render(call, reply)
        return await write_reply(request, call, reply)
    except ProxyError as e:
        failed(call, e)
        carry_headers(call, e)
        raise
    except asyncio.CancelledError:
        if call.ended_by == DRAIN and call.first_byte_at is None:
            _uncancel()                          # the drain deadline: answer 503 in the envelope
            down = ShuttingDown("The server is shutting down; retry on another replica.",
                                headers={"Retry-After": "1"})
            failed(call, down)
            raise down from None
        _gone(call)
        raise
    except ConnectionError:
        _gone(call)
        raise
    except Exception:
        call.status, call.error = 500, "internal error"
        raise
    finally:
        gw.end(call)


def _gone(call: ChatCall) -> None:
    if call.ended_by is None:
        call.ended_by = CLIENT_GONE
    call.status = CLIENT_CLOSED


def _uncancel() -> None:
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def write_reply(request: web.Request, call: ChatCall, reply: Reply) -> web.StreamResponse:
    headers = {**reply.headers, **call.response_headers, "x-request-id": call.request_id,
               **request.get(CORS_HEADERS, {})}
    if reply.chunks is None:
        call.status = reply.status
        whole = web.Response(body=reply.body, status=reply.status, headers=headers, content_type=reply.content_type)
        # Sent here, not after the handler returns: the call's end (accounting, metrics, logs, spans)
        # then runs while the client already reads its answer, never in front of it.
        try:
            await whole.prepare(request)
            await whole.write_eof()
        except ConnectionError:
            _gone(call)
        return whole
    resp = EventStream(status=reply.status, headers={**headers, **SSE_HEADERS})
    call.status = reply.status
    chunks = reply.chunks
    guard = WriteGuard(request, call, request.app[GATEWAY].config.server.write_timeout)
    last = b""                                   # OpenAI's [DONE] event, held for the body's end
    try:
        await resp.prepare(request)
        async for data in chunks:
            if call.first_byte_at is None:
                call.first_byte_at = time.monotonic()
            if last:
                guard.stamp(len(last))
                await resp.write(last)           # not the end after all: out it goes, in order
                guard.since = 0.0
                last = b""
            if data.endswith(DONE):
                # OpenAI's last event: it leaves with the body's end, in one write rather than two (a
                # send and a client wake-up a stream). The relay ends at once after it (the upstream's
                # end follows [DONE]), and the bytes and their order are as they were.
                last = data
                continue
            guard.stamp(len(data))
            await resp.write(data)
            guard.since = 0.0
    except ProxyError as e:
        # The status line is gone already: the error becomes the stream's last event.
        failed(call, e)
        try:
            await resp.write(last + e.sse())
        except ConnectionError:
            _gone(call)
        last = b""
    except ConnectionError:
        _gone(call)                              # the client hung up (or a stalled reader was cut off)
        return resp
    except asyncio.CancelledError:
        if call.ended_by != DRAIN:
            raise
        _uncancel()                              # the drain deadline: tell the client, then close
        down = ShuttingDown("The server is shutting down; the stream was ended by the drain deadline.")
        failed(call, down)
        call.ended_by = DRAIN
        await resp.write(last + down.sse())
        last = b""
    finally:
        guard.cancel()
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
    try:
        await resp.write_eof(last)
    except ConnectionError:
        if last:
            _gone(call)                          # [DONE] did not reach the client
    return resp


class WriteGuard:
    """Aborts the connection of a client that stopped reading: a write pending longer than
    `server.write_timeout` ends the call as `write_stall`. Per chunk the writer only stamps `since`; the
    timer re-arms itself lazily (one timer a stream, not one a write), and is armed only once the stream
    could wait on a write at all: aiohttp awaits a write (drains) only past 64 KiB sent since its last
    drain, counting headers and chunk framing. Until `UNGUARDED` bytes (counted with 16 bytes of framing a
    write; the rest of the 64 KiB is left for the headers) no write can wait, so a short stream never
    arms a timer (a call_later and its cancel: ~1% of a short stream's CPU)."""

    UNGUARDED = 32 * 1024

    __slots__ = ("_handle", "_left", "call", "loop", "request", "since", "timeout")

    def __init__(self, request: web.Request, call: ChatCall, timeout: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.request, self.call, self.timeout = request, call, timeout
        self.since = 0.0
        self._handle: asyncio.TimerHandle | None = None
        self._left = self.UNGUARDED if timeout > 0 else -1

    def stamp(self, size: int) -> None:
        """A write of `size` bytes starts now."""
        self.since = self.loop.time()
        if self._left >= 0:
            self._left -= size + 16
            if self._left < 0:
                self._handle = self.loop.call_at(self.since + self.timeout, self._check)

    def _check(self) -> None:
        since = self.since
        now = self.loop.time()
        if since and now - since >= self.timeout:
            self.call.ended_by = WRITE_STALL
            self.call.status = CLIENT_CLOSED
            transport = self.request.transport
            if transport is not None:
                transport.abort()                # the pending write fails; the handler ends the call
            self._handle = None
            return
        self._handle = self.loop.call_at((since or now) + self.timeout, self._check)

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
