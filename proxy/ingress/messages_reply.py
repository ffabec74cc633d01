"""OpenAI chat reply -> Anthropic Messages reply: a `Message` body, or the `RawMessageStreamEvent` stream
(message_start, content_block_start / _delta / _stop, message_delta with the final usage, message_stop).

The mirror image of proxy/providers/anthropic/response.py and stream.py. Plain text deltas, most of a
stream, take a fast path: their JSON string literal is spliced into the Anthropic event unparsed.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson

from proxy.context import Usage, usage_from_openai
from proxy.cost.tokens import MESSAGE_OVERHEAD, REPLY_PRIMING, prompt_text
from proxy.errors import ProxyError, UpstreamError
from proxy.providers.anthropic.response import FINISH
from proxy.streaming.sse import SSEDecoder

STOP = {v: k for k, v in FINISH.items() if k in ("end_turn", "max_tokens", "tool_use", "refusal")}
_TEXT = re.compile(rb'"delta":\{"content":("(?:[^"\\]|\\.)*")\}')


def new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex[:24]


def anthropic_usage(u: Usage) -> dict[str, int]:
    """Anthropic counts cache reads and writes apart from `input_tokens` (ours includes them)."""
    fresh = max(0, u.prompt_tokens - u.cached_tokens - u.cache_write_tokens)
    return {"input_tokens": fresh, "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": u.cached_tokens, "cache_creation_input_tokens": u.cache_write_tokens}


def estimate_input(chat: dict[str, Any]) -> int:
    """message_start's input count before the upstream reported one: chars/4 of the prompt, never 0."""
    return max(1, (len(prompt_text(chat)) + 3) // 4 + MESSAGE_OVERHEAD * len(chat.get("messages") or [])
               + REPLY_PRIMING)


def message_body(chat_reply: bytes, model: str) -> bytes:
    """A chat.completion body as an Anthropic `Message`."""
    try:
        data = orjson.loads(chat_reply)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream answer is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("the upstream answer is not a chat completion")
    choices = data.get("choices")
    choice: dict[str, Any] = (choices[0] if isinstance(choices, list) and choices
                              and isinstance(choices[0], dict) else {})
    msg: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    content: list[dict[str, Any]] = []
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
        content.append({"type": "thinking", "thinking": msg["reasoning_content"], "signature": ""})
    if isinstance(msg.get("content"), str) and msg["content"]:
        content.append({"type": "text", "text": msg["content"]})
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = {}
        content.append({"type": "tool_use", "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                        "name": fn.get("name") or "", "input": args if isinstance(args, dict) else {}})
    usage = usage_from_openai(data.get("usage")) or Usage()
    return orjson.dumps({
        "id": new_message_id(), "type": "message", "role": "assistant", "model": model, "content": content,
        "stop_reason": STOP.get(str(choice.get("finish_reason")), "end_turn"), "stop_sequence": None,
        "usage": anthropic_usage(usage)})


def _event(kind: str, payload: bytes) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + payload + b"\n\n"


def _json_event(obj: dict[str, Any]) -> bytes:
    return _event(obj["type"], orjson.dumps(obj))


class MessagesStream:
    """OpenAI chat SSE bytes in (any split), Anthropic events out. One per call."""

    __slots__ = ("_block", "_decoder", "_index", "_input", "_model", "_out_chars", "_stop", "_tools", "_usage",
                 "done")

    def __init__(self, model: str, input_tokens: int) -> None:
        self._decoder = SSEDecoder()
        self._model = model
        self._input = input_tokens
        self._index = -1                 # the open content block's index, -1: none yet
        self._block: str | None = None   # "text" | "thinking" | "tool_use" | None (closed)
        self._tools: dict[int, int] = {}   # OpenAI tool call index -> content block index
        self._stop = "end_turn"
        self._usage: Usage | None = None
        self._out_chars = 0
        self.done = False

    def start(self) -> bytes:
        return _json_event({"type": "message_start", "message": {
            "id": new_message_id(), "type": "message", "role": "assistant", "model": self._model, "content": [],
            "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": self._input, "output_tokens": 0}}})

    def feed(self, data: bytes) -> bytes:
        out: list[bytes] = []
        for e in self._decoder.feed(data):
            raw = e.data
            if raw == "[DONE]":
                out.append(self._end())
                continue
            if not raw:
                continue
            b = raw.encode()
            m = _TEXT.search(b)
            if m is not None and b'"finish_reason":"' not in b and b'"usage":{' not in b:
                if m.group(1) != b'""':
                    self._out_chars += len(m.group(1))
                    out.append(self._open("text") + _event(
                        "content_block_delta", b'{"type":"content_block_delta","index":' + str(self._index).encode()
                        + b',"delta":{"type":"text_delta","text":' + m.group(1) + b"}}"))
                continue
            out.append(self._chunk(orjson.loads(b)))
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if isinstance(obj.get("usage"), dict):
            self._usage = usage_from_openai(obj["usage"])
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            r = delta.get("reasoning_content") or delta.get("reasoning")
            if isinstance(r, str) and r:
                self._out_chars += len(r)
                out.append(self._open("thinking") + self._delta({"type": "thinking_delta", "thinking": r}))
            text = delta.get("content")
            if isinstance(text, str) and text:
                self._out_chars += len(text)
                out.append(self._open("text") + self._delta({"type": "text_delta", "text": text}))
            for tc in delta.get("tool_calls") or []:
                out.append(self._tool(tc))
            if ch.get("finish_reason"):
                self._stop = STOP.get(ch["finish_reason"], "end_turn")
        return b"".join(out)

    def _tool(self, tc: dict[str, Any]) -> bytes:
        n = tc.get("index", 0)
        fn = tc.get("function") or {}
        out = b""
        if n not in self._tools:
            out = self._close()
            self._index += 1
            self._tools[n] = self._index
            self._block = "tool_use"
            out += _json_event({"type": "content_block_start", "index": self._index, "content_block": {
                "type": "tool_use", "id": tc.get("id") or "toolu_" + uuid.uuid4().hex[:24],
                "name": fn.get("name") or "", "input": {}}})
        args = fn.get("arguments")
        if isinstance(args, str) and args:
            self._out_chars += len(args)
            out += _json_event({"type": "content_block_delta", "index": self._tools[n],
                                "delta": {"type": "input_json_delta", "partial_json": args}})
        return out

    def _delta(self, delta: dict[str, Any]) -> bytes:
        return _json_event({"type": "content_block_delta", "index": self._index, "delta": delta})

    def _open(self, kind: str) -> bytes:
        if self._block == kind:
            return b""
        out = self._close()
        self._index += 1
        self._block = kind
        block: dict[str, Any] = ({"type": "text", "text": ""} if kind == "text"
                                 else {"type": "thinking", "thinking": "", "signature": ""})
        return out + _json_event({"type": "content_block_start", "index": self._index, "content_block": block})

    def _close(self) -> bytes:
        if self._block is None:
            return b""
        out = b""
        if self._block == "thinking":      # Anthropic closes a thinking block with its signature
            out = self._delta({"type": "signature_delta", "signature": ""})
        self._block = None
        return out + _json_event({"type": "content_block_stop", "index": self._index})

    def _end(self) -> bytes:
        self.done = True
        usage = self._usage or Usage(prompt_tokens=self._input, completion_tokens=(self._out_chars + 3) // 4,
                                     estimated=True)
        return self._close() + _json_event({
            "type": "message_delta", "delta": {"stop_reason": self._stop, "stop_sequence": None},
            "usage": anthropic_usage(usage)}) + _event("message_stop", b'{"type":"message_stop"}')


async def render_stream(chunks: AsyncIterator[bytes], stream: MessagesStream | None,
                        failed: Callable[[ProxyError], None]) -> AsyncIterator[bytes]:
    """The stream in Anthropic's events (`stream` None: it is already, relay it as is). An error after the
    status line went out becomes Anthropic's `error` event; `failed(e)` records it on the call."""
    try:
        if stream is None:
            async for data in chunks:
                yield data
            return
        yield stream.start()
        async for data in chunks:
            out = stream.feed(data)
            if out:
                yield out
    except ProxyError as e:
        failed(e)
        yield e.anthropic_sse()
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
