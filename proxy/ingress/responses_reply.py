"""OpenAI chat reply -> Responses API reply: a `Response` object, or its SSE events (response.created,
response.in_progress, response.output_item.added, response.content_part.added, response.output_text.delta /
.done, response.function_call_arguments.delta / .done, response.output_item.done, then response.completed,
.incomplete or .failed), each with its `sequence_number`. Shapes follow the SDK's openai.types.responses.

Plain text deltas, most of a stream, take a fast path: their JSON string literal is spliced in unparsed,
between the bytes before and after it, built once per output item; the literals are decoded together when the
item closes. The upstream is read as `data: ...` blocks in bytes (the full SSE decoder only for anything
else). `response.created` and `.in_progress` leave with the first upstream bytes, in the same write.
"""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from random import getrandbits
from typing import Any

import orjson

from proxy.context import Usage, usage_from_openai
from proxy.errors import ProxyError, UpstreamError
from proxy.streaming.sse import SSEDecoder

_TEXT = re.compile(rb'"delta":\{"content":("(?:[^"\\]|\\.)*")\}')
INCOMPLETE = {"length": "max_output_tokens", "content_filter": "content_filter"}


_DELTA = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
_DELTA_END = b',"logprobs":[]}\n\n'


def new_id(prefix: str) -> str:
    """Unique, not secret (stored responses are keyed by tenant too), and time-ordered as OpenAI's ids are:
    14 hex digits of microseconds, then 72 random bits, without a system call. Ordered ids land at the end of
    the stored_responses key index instead of on a random page of it: SQLite's CPU a stored row ~20 -> ~8 us
    (80k rows, batches of 8)."""
    return f"{prefix}{time.time_ns() // 1000:014x}{getrandbits(72):018x}"


def usage_object(u: Usage) -> dict[str, Any]:
    return {"input_tokens": u.prompt_tokens,
            "input_tokens_details": {"cached_tokens": u.cached_tokens, "cache_write_tokens": u.cache_write_tokens},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens or u.prompt_tokens + u.completion_tokens}


class Draft:
    """The Response being built: request fields echoed, output items, status."""

    __slots__ = ("created", "id", "model", "req")

    def __init__(self, req: dict[str, Any], model: str) -> None:
        self.req, self.model = req, model
        self.id = new_id("resp_")
        self.created = int(time.time())

    def response(self, status: str, output: list[dict[str, Any]], usage: Usage | None = None,
                  finish: str | None = None, error: dict[str, Any] | None = None) -> dict[str, Any]:
        req = self.req
        reason = INCOMPLETE.get(finish or "")
        if status == "completed" and reason:
            status = "incomplete"
        reasoning: dict[str, Any] = req["reasoning"] if isinstance(req.get("reasoning"), dict) else {}
        return {
            "id": self.id, "object": "response", "created_at": self.created, "status": status,
            "background": False, "error": error,
            "incomplete_details": {"reason": reason} if status == "incomplete" else None,
            "instructions": req.get("instructions"), "max_output_tokens": req.get("max_output_tokens"),
            "model": self.model, "output": output, "parallel_tool_calls": req.get("parallel_tool_calls", True),
            "previous_response_id": req.get("previous_response_id"),
            "reasoning": {"effort": reasoning.get("effort"), "summary": reasoning.get("summary")},
            "store": req.get("store", True), "temperature": req.get("temperature", 1.0),
            "text": req.get("text") or {"format": {"type": "text"}}, "tool_choice": req.get("tool_choice", "auto"),
            "tools": req.get("tools") or [], "top_p": req.get("top_p", 1.0),
            "truncation": req.get("truncation", "disabled"),
            "usage": usage_object(usage) if usage is not None else None, "user": req.get("user"),
            "metadata": req.get("metadata") or {},
            **({"completed_at": int(time.time())} if status == "completed" else {}),
        }


def message_item(text: str, status: str = "completed", item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("msg_"), "type": "message", "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}] if text or
            status == "completed" else []}


def call_item(call_id: str, name: str, arguments: str, status: str = "completed",
              item_id: str | None = None) -> dict[str, Any]:
    return {"id": item_id or new_id("fc_"), "type": "function_call", "status": status, "call_id": call_id,
            "name": name, "arguments": arguments}


def assistant_message(output: list[dict[str, Any]]) -> dict[str, Any]:
    """The output items as one chat assistant message (what a continuation sends back)."""
    text = "".join(p.get("text", "") for it in output if it["type"] == "message" for p in it["content"])
    calls = [{"id": it["call_id"], "type": "function", "function": {"name": it["name"], "arguments": it["arguments"]}}
             for it in output if it["type"] == "function_call"]
    msg: dict[str, Any] = {"role": "assistant", "content": text or None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def response_body(chat_reply: bytes, draft: Draft) -> dict[str, Any]:
    """A chat.completion body as a `Response` object."""
    try:
        data = orjson.loads(chat_reply)
    except orjson.JSONDecodeError:
        raise UpstreamError("the upstream answer is not JSON") from None
    if not isinstance(data, dict):
        raise UpstreamError("the upstream answer is not a chat completion")
    choices = data.get("choices")
    choice: dict[str, Any] = choices[0] if isinstance(choices, list) and choices and isinstance(choices[0], dict) else {}
    msg: dict[str, Any] = choice["message"] if isinstance(choice.get("message"), dict) else {}
    output: list[dict[str, Any]] = []
    if isinstance(msg.get("reasoning_content"), str) and msg["reasoning_content"]:
        output.append({"id": new_id("rs_"), "type": "reasoning", "summary": [],
                       "content": [{"type": "reasoning_text", "text": msg["reasoning_content"]}]})
    if isinstance(msg.get("content"), str) and msg["content"]:
        output.append(message_item(msg["content"]))
    for tc in msg.get("tool_calls") or []:
        fn = tc.get("function") or {}
        output.append(call_item(str(tc.get("id") or new_id("call_")), str(fn.get("name") or ""),
                                str(fn.get("arguments") or "")))
    usage = usage_from_openai(data.get("usage")) or Usage()
    return draft.response("completed", output, usage, str(choice.get("finish_reason") or ""))


class ResponsesStream:
    """OpenAI chat SSE bytes in (any split), Responses events out. One per call. `final` holds the
    finished Response once the upstream ended."""

    __slots__ = ("_buf", "_decoder", "_delta", "_finish", "_lits", "_open", "_parts", "_seq", "_tools", "_usage",
                 "draft", "final", "output")

    def __init__(self, draft: Draft) -> None:
        self.draft = draft
        self._buf = b""                              # a partial `data:` block
        self._decoder: SSEDecoder | None = None      # the full decoder, once the upstream sent anything unusual
        self._seq = 0
        self.output: list[dict[str, Any]] = []
        self._open: dict[str, Any] | None = None    # the output item still receiving deltas
        self._parts: list[str] = []                  # its arguments so far (a function call)
        self._lits: list[bytes] = []                 # its text so far, as JSON string literals (a message)
        self._delta: bytes | None = None             # an open message's text delta bytes between seq and literal
        self._tools: dict[int, int] = {}             # chat tool call index -> output index
        self._finish: str | None = None
        self._usage: Usage | None = None
        self.final: dict[str, Any] | None = None

    def _ev(self, kind: str, fields: dict[str, Any]) -> bytes:
        data = orjson.dumps({"type": kind, "sequence_number": self._seq, **fields})
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + data + b"\n\n"

    def _with_response(self, kind: str, resp: bytes) -> bytes:
        """`_ev(kind, {"response": ...})` with the Response already encoded."""
        head = b'{"type":"%s","sequence_number":%d,"response":' % (kind.encode(), self._seq)
        self._seq += 1
        return b"event: " + kind.encode() + b"\ndata: " + head + resp + b"}\n\n"

    def start(self) -> bytes:
        resp = orjson.dumps(self.draft.response("in_progress", []))
        return self._with_response("response.created", resp) + self._with_response("response.in_progress", resp)

    def feed(self, data: bytes) -> bytes:
        if self._decoder is not None:
            return self._events([e.data.encode() for e in self._decoder.feed(data)])
        buf = self._buf + data if self._buf else data
        if b"\r" in buf:                            # CR line ends: not what OpenAI sends; decode fully from now on
            self._buf, self._decoder = b"", SSEDecoder()
            return self.feed(buf)
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b""
        self._buf = buf[end + 2:]
        out: list[bytes] = []
        for block in buf[:end].split(b"\n\n"):
            simple = block.startswith(b"data: ") and b"\n" not in block
            mid = self._delta
            if simple and mid is not None:
                m = _TEXT.search(block)
                if m is not None and b'"finish_reason":"' not in block and b'"usage":{' not in block:
                    # Inlined _text_literal into an open message, most of a stream: 2.2 -> 1.6 us an event.
                    lit = m.group(1)
                    if lit != b'""':
                        self._lits.append(lit)
                        out += (_DELTA, b"%d" % self._seq, mid, lit, _DELTA_END)
                        self._seq += 1
                    continue
            if simple:
                out.append(self._events([block[6:]]))
            elif block:                              # comments, other fields, multi-line data
                out.append(self._events([e.data.encode() for e in SSEDecoder().feed(block + b"\n\n")]))
        return b"".join(out)

    def _events(self, payloads: list[bytes]) -> bytes:
        out: list[bytes] = []
        for b in payloads:
            if b == b"[DONE]":
                out.append(self._end())
                continue
            if not b:
                continue
            m = _TEXT.search(b)
            if m is not None and b'"finish_reason":"' not in b and b'"usage":{' not in b:
                if m.group(1) != b'""':
                    out.append(self._text_literal(m.group(1)))
                continue
            out.append(self._chunk(orjson.loads(b)))
        return b"".join(out)

    def _chunk(self, obj: dict[str, Any]) -> bytes:
        out: list[bytes] = []
        if isinstance(obj.get("usage"), dict):
            self._usage = usage_from_openai(obj["usage"])
        for ch in obj.get("choices") or []:
            delta = ch.get("delta") or {}
            text = delta.get("content")
            if isinstance(text, str) and text:
                out.append(self._text_literal(orjson.dumps(text)))
            for tc in delta.get("tool_calls") or []:
                out.append(self._tool(tc))
            if ch.get("finish_reason"):
                self._finish = ch["finish_reason"]
        return b"".join(out)

    def _text_literal(self, lit: bytes) -> bytes:
        out = b""
        mid = self._delta
        if mid is None:                              # no message open: open one
            out = self._close()
            item = self._begin(message_item("", "in_progress"))
            i = len(self.output) - 1
            out += self._ev("response.output_item.added", {"output_index": i, "item": item})
            out += self._ev("response.content_part.added", {
                "item_id": item["id"], "output_index": i, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": [], "logprobs": []}})
            mid = self._delta = b',"item_id":"%s","output_index":%d,"content_index":0,"delta":' % (
                item["id"].encode(), i)
        self._lits.append(lit)
        seq = self._seq
        self._seq = seq + 1
        return out + _DELTA + b"%d" % seq + mid + lit + _DELTA_END

    def _tool(self, tc: dict[str, Any]) -> bytes:
        n = tc.get("index", 0)
        fn = tc.get("function") or {}
        out = b""
        if n not in self._tools:
            out = self._close()
            item = self._begin(call_item(str(tc.get("id") or new_id("call_")), str(fn.get("name") or ""), "",
                                         "in_progress"))
            self._tools[n] = len(self.output) - 1
            out += self._ev("response.output_item.added", {"output_index": len(self.output) - 1, "item": item})
        args = fn.get("arguments")
        if isinstance(args, str) and args and self._open is not None and self._tools[n] == len(self.output) - 1:
            self._parts.append(args)
            out += self._ev("response.function_call_arguments.delta", {
                "item_id": self._open["id"], "output_index": len(self.output) - 1, "delta": args})
        return out

    def _begin(self, item: dict[str, Any]) -> dict[str, Any]:
        self.output.append(item)
        self._open = item
        self._parts, self._lits, self._delta = [], [], None
        return item

    def _close(self) -> bytes:
        item = self._open
        if item is None:
            return b""
        self._open = self._delta = None
        i = len(self.output) - 1
        item["status"] = "completed"
        if item["type"] == "message":
            joined = "".join(orjson.loads(b"[" + b",".join(self._lits) + b"]"))
            part = {"type": "output_text", "text": joined, "annotations": [], "logprobs": []}
            item["content"] = [part]
            out = self._ev("response.output_text.done", {"item_id": item["id"], "output_index": i,
                                                         "content_index": 0, "text": joined, "logprobs": []})
            out += self._ev("response.content_part.done", {"item_id": item["id"], "output_index": i,
                                                           "content_index": 0, "part": part})
        else:
            joined = "".join(self._parts)
            item["arguments"] = joined
            out = self._ev("response.function_call_arguments.done", {"item_id": item["id"], "output_index": i,
                                                                     "name": item["name"], "arguments": joined})
        return out + self._ev("response.output_item.done", {"output_index": i, "item": item})

    def _end(self) -> bytes:
        out = self._close()
        usage = self._usage or Usage(estimated=True)
        self.final = self.draft.response("completed", self.output, usage, self._finish)
        kind = "response.incomplete" if self.final["status"] == "incomplete" else "response.completed"
        return out + self._ev(kind, {"response": self.final})

    def failed(self, e: ProxyError) -> bytes:
        resp = self.draft.response("failed", self.output, self._usage,
                                   error={"code": e.code or "server_error", "message": e.message})
        return self._close() + self._ev("response.failed", {"response": resp})


async def render_stream(chunks: AsyncIterator[bytes], stream: ResponsesStream | None,
                        failed: Callable[[ProxyError], None],
                        done: Callable[[], None]) -> AsyncIterator[bytes]:
    """The stream in Responses events (`stream` None: it is already, relay it as is). A failure after the
    status line went out becomes `response.failed`; `failed(e)` records it on the call, `done()` runs once
    the response completed (it is stored)."""
    head = b""      # response.created and .in_progress, held for the first write: one write a stream saved
    try:
        if stream is not None:
            head = stream.start()
        async for data in chunks:
            out = stream.feed(data) if stream is not None else data
            if out:
                if head:
                    out, head = head + out, b""
                yield out
        if head:
            yield head
        done()
    except ProxyError as e:
        failed(e)
        if stream is not None:
            yield head + stream.failed(e)
        else:
            yield e.sse()
    finally:
        aclose = getattr(chunks, "aclose", None)
        if aclose is not None:
            await aclose()
