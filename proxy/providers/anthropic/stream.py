"""Anthropic Messages SSE -> OpenAI chat.completion.chunk SSE.

Events (SDK `RawMessageStreamEvent` plus `ping` and `error`): message_start, content_block_start,
content_block_delta (text_delta, input_json_delta, thinking_delta, signature_delta, citations_delta),
content_block_stop, message_delta, message_stop. Tool calls get OpenAI indexes 0, 1, 2... in the order
their blocks start, whatever Anthropic's content-block index is.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.context import Usage
from proxy.errors import UpstreamError
from proxy.providers.anthropic.response import error_for_type, finish_reason, merge_usage
from proxy.streaming.chunks import DONE, ChunkWriter
from proxy.streaming.sse import Event, SSEDecoder

_TEXT, _TOOL, _ANSWER, _THINKING, _OTHER = range(5)

# Most events of a stream are plain text deltas in exactly this shape: their JSON string literal is
# spliced into the OpenAI chunk as is (it is valid JSON either way), with no decode and re-encode.
_TEXT_DELTA = re.compile(r'\{"type":"content_block_delta","index":(\d+),"delta":\{"type":"text_delta",'
                         r'"text":("(?:[^"\\]|\\.)*")\}\}')


class AnthropicStream:
    """Per request. `usage` holds what the provider reported so far, even if the stream breaks."""

    __slots__ = ("_answer", "_answered", "_blocks", "_decoder", "_done", "_error", "_stop", "_tools", "_u", "_w",
                 "usage")

    def __init__(self, model: str, include_usage: bool, answer_tool: str | None) -> None:
        self._decoder = SSEDecoder()
        self._w = ChunkWriter(model, include_usage)
        self._answer = answer_tool
        self._answered = False
        self._blocks: dict[int, tuple[int, int]] = {}    # anthropic block index -> (kind, openai tool index)
        self._tools = 0
        self._stop: str | None = None
        self._u: dict[str, int] = {}
        self._done = False
        self._error: UpstreamError | None = None
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        events = self._decoder.feed(data)
        if not events:
            return b""
        return self._run(events)

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        out = self._run(self._decoder.flush())
        if self._error is not None:
            raise self._error
        if not self._done:
            raise UpstreamError("the Anthropic stream ended before message_stop")
        return out

    def _run(self, events: list[Event]) -> bytes:
        """Translate events. An error event after some output in the same read is held back and raised on
        the next call, so the text that came before it still reaches the client."""
        out: list[bytes] = []
        for e in events:
            try:
                out.append(self._event(e))
            except UpstreamError as err:
                if not any(out):
                    raise
                self._error = err
                break
        return b"".join(out)

    def _event(self, e: Event) -> bytes:
        if self._done or e.event == "ping" or not e.data:
            return b""
        m = _TEXT_DELTA.fullmatch(e.data)
        if m is not None and self._blocks.get(int(m.group(1)), (_TEXT, 0))[0] == _TEXT:
            if m.group(2) == '""':
                return self._w.delta({"content": ""})
            return self._w.raw_delta(b'{"content":' + m.group(2).encode() + b"}")
        try:
            obj = orjson.loads(e.data)
        except orjson.JSONDecodeError:
            raise UpstreamError("the Anthropic stream sent an event that is not JSON") from None
        kind = obj.get("type") if isinstance(obj, dict) else None
        if kind == "content_block_delta":
            return self._delta(obj.get("index"), obj.get("delta") or {})
        if kind == "content_block_start":
            return self._start(obj.get("index"), obj.get("content_block") or {})
        if kind == "message_start":
            msg = obj.get("message") or {}
            if msg.get("id"):
                self._w.id = msg["id"]
            if msg.get("model"):
                self._w.model = msg["model"]
            self._usage(msg.get("usage"))
            return self._w.delta({"role": "assistant", "content": ""})
        if kind == "message_delta":
            self._stop = (obj.get("delta") or {}).get("stop_reason") or self._stop
            self._usage(obj.get("usage"))
            return b""
        if kind == "message_stop":
            self._done = True
            usage = self.usage or Usage(estimated=True)
            fin = finish_reason(self._stop, self._answered, self._tools > 0)
            return self._w.delta({}, fin) + self._w.usage(usage) + DONE
        if kind == "error" or e.event == "error":
            err = obj.get("error") if isinstance(obj, dict) else None
            err = err if isinstance(err, dict) else {}
            etype = err.get("type") if isinstance(err.get("type"), str) else None
            raise error_for_type(etype, str(err.get("message") or "the Anthropic stream reported an error"), None)
        return b""     # content_block_stop, and event types newer than this adapter

    def _start(self, index: Any, block: dict[str, Any]) -> bytes:
        kind = block.get("type")
        if kind == "text":
            self._blocks[index] = (_TEXT, 0)
            return self._w.delta({"content": block["text"]}) if block.get("text") else b""
        if kind == "tool_use":
            if self._answer is not None and block.get("name") == self._answer:
                self._blocks[index] = (_ANSWER, 0)
                self._answered = True
                return b""
            n = self._tools
            self._tools += 1
            self._blocks[index] = (_TOOL, n)
            return self._w.delta({"tool_calls": [{"index": n, "id": block.get("id"), "type": "function",
                                                  "function": {"name": block.get("name"), "arguments": ""}}]})
        if kind == "thinking":
            self._blocks[index] = (_THINKING, 0)
            return self._w.delta({"reasoning_content": block["thinking"]}) if block.get("thinking") else b""
        self._blocks[index] = (_OTHER, 0)
        return b""

    def _delta(self, index: Any, delta: dict[str, Any]) -> bytes:
        kind, n = self._blocks.get(index, (_TEXT, 0))
        dt = delta.get("type")
        if dt == "text_delta" and kind == _TEXT:
            return self._w.delta({"content": delta.get("text") or ""})
        if dt == "input_json_delta":
            part = delta.get("partial_json") or ""
            if not part:
                return b""
            if kind == _ANSWER:
                return self._w.delta({"content": part})
            if kind == _TOOL:
                return self._w.delta({"tool_calls": [{"index": n, "function": {"arguments": part}}]})
        if dt == "thinking_delta" and delta.get("thinking"):
            return self._w.delta({"reasoning_content": delta["thinking"]})
        return b""       # signature_delta, citations_delta: no OpenAI form

    def _usage(self, u: Any) -> None:
        """message_start carries the input counts; message_delta the cumulative output (and maybe input)."""
        merged = merge_usage(self._u, u)
        if merged is not None:
            self.usage = merged
