"""ConverseStream (binary AWS event stream) -> OpenAI chat.completion.chunk SSE.

Bedrock numbers every content block (text and toolUse alike) with `contentBlockIndex`; OpenAI numbers
only tool calls. `_tools` maps the one to the other as toolUse blocks start.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import Usage
from proxy.errors import UpstreamError, upstream_error_for_status
from proxy.providers.aws_eventstream import EventStreamDecoder, Message
from proxy.providers.bedrock_wire import finish_reason, usage_from_converse
from proxy.streaming.chunks import DONE, ChunkWriter

# ConverseStreamOutput's exception members -> the status error_from_wire gives the same exception
# outside a stream (modelStreamErrorException is 424 in the service model: a model fault, so 502 here).
STREAM_EXCEPTIONS = {"throttlingException": 429, "validationException": 400,
                     "serviceUnavailableException": 503, "internalServerException": 500,
                     "modelStreamErrorException": 502}


class ConverseStreamTranslator:
    __slots__ = ("_decoder", "_done", "_error", "_finish", "_started", "_tools", "_writer", "usage")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._decoder = EventStreamDecoder()
        self._writer = ChunkWriter(model, include_usage)
        self._tools: dict[int, int] = {}     # contentBlockIndex -> OpenAI tool_calls index
        self._started = False
        self._finish: str | None = None
        self._done = False
        self._error: UpstreamError | None = None
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        out: list[bytes] = []
        try:
            for msg in self._decoder.feed(data):
                self._event(msg, out)
        except UpstreamError as e:
            if not out:
                raise
            self._error = e          # deliver the chunks decoded before the error first
        return b"".join(out)

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        if self._decoder.pending:
            raise UpstreamError("Bedrock stream ended in the middle of an event")
        if self._done:
            return b""
        if self._finish is None:
            raise UpstreamError("Bedrock stream ended before messageStop")
        return self._close()

    def _close(self) -> bytes:
        self._done = True
        tail = self._writer.usage(self.usage) if self.usage is not None else b""
        return tail + DONE

    def _event(self, msg: Message, out: list[bytes]) -> None:
        mtype = msg.header(":message-type")
        if mtype != "event":
            raise _stream_error(msg, mtype)
        etype = msg.header(":event-type")
        try:
            ev: Any = orjson.loads(msg.payload) if msg.payload else {}
        except orjson.JSONDecodeError:
            raise UpstreamError(f"Bedrock stream event '{etype}' is not JSON") from None
        w = self._writer
        if not self._started and etype in ("messageStart", "contentBlockStart", "contentBlockDelta"):
            self._started = True
            out.append(w.delta({"role": "assistant", "content": ""}))
        if etype == "contentBlockDelta":
            delta = ev.get("delta") or {}
            if isinstance(delta.get("text"), str):
                if delta["text"]:
                    out.append(w.delta({"content": delta["text"]}))
            elif isinstance(delta.get("toolUse"), dict):
                idx = self._tools.get(ev.get("contentBlockIndex", -1))
                if idx is None:
                    raise UpstreamError("Bedrock stream sent toolUse input before the block started")
                out.append(w.delta({"tool_calls": [{"index": idx, "function": {
                    "arguments": delta["toolUse"].get("input") or ""}}]}))
            # reasoningContent / citation deltas are not part of OpenAI's chunk format: skipped.
        elif etype == "contentBlockStart":
            tu = (ev.get("start") or {}).get("toolUse")
            if isinstance(tu, dict):
                idx = self._tools[ev.get("contentBlockIndex", len(self._tools))] = len(self._tools)
                out.append(w.delta({"tool_calls": [{"index": idx, "id": tu.get("toolUseId"), "type": "function",
                                                    "function": {"name": tu.get("name"), "arguments": ""}}]}))
        elif etype == "messageStop":
            self._finish = finish_reason(ev.get("stopReason"))
            out.append(w.delta({}, self._finish))
        elif etype == "metadata":
            self.usage = usage_from_converse(ev.get("usage")) or self.usage
            if self._finish is not None and not self._done:
                out.append(self._close())
        # messageStart (role only) and contentBlockStop carry nothing else OpenAI needs.


def _stream_error(msg: Message, mtype: str) -> UpstreamError:
    """An exception event (`:exception-type`, JSON {"message"}) or a generic error message
    (`:error-code`, `:error-message`) inside an otherwise 200 stream."""
    if mtype == "exception":
        etype = msg.header(":exception-type")
        try:
            data = orjson.loads(msg.payload)
            message = str(data.get("message") or data.get("Message") or etype) if isinstance(data, dict) else etype
        except orjson.JSONDecodeError:
            message = etype
        return upstream_error_for_status(STREAM_EXCEPTIONS.get(etype, 502), message)
    if mtype == "error":
        return upstream_error_for_status(502, f"Bedrock stream error {msg.header(':error-code')}: "
                                              f"{msg.header(':error-message')}")
    return UpstreamError(f"Bedrock stream sent an unknown message type '{mtype}'")
