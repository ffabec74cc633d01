"""Gemini `GenerateContentResponse` -> OpenAI: whole responses, and the SSE stream translator.

Field names follow google-genai's types (Candidate, Part, FunctionCall, UsageMetadata, FinishReason,
GenerateContentResponsePromptFeedback) in the REST API's camelCase.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import orjson

from proxy.context import Usage
from proxy.errors import UpstreamError
from proxy.streaming.chunks import DONE, ChunkWriter, completion_body, new_id
from proxy.streaming.sse import Event, SSEDecoder

FILTERED = frozenset({"SAFETY", "RECITATION", "BLOCKLIST", "PROHIBITED_CONTENT", "SPII", "IMAGE_SAFETY",
                      "IMAGE_PROHIBITED_CONTENT", "IMAGE_RECITATION", "MODEL_ARMOR"})


def finish_reason(raw: str, has_calls: bool) -> str:
    """Gemini FinishReason -> OpenAI's. Anything Gemini-specific without an OpenAI twin counts as `stop`."""
    if raw == "MAX_TOKENS":
        return "length"
    if raw in FILTERED:
        return "content_filter"
    return "tool_calls" if has_calls else "stop"


def usage_from_gemini(u: Any) -> Usage | None:
    """UsageMetadata -> Usage. Thinking tokens are billed as output, tool-use prompt tokens as input."""
    if not isinstance(u, dict):
        return None
    prompt = int(u.get("promptTokenCount") or 0) + int(u.get("toolUsePromptTokenCount") or 0)
    completion = int(u.get("candidatesTokenCount") or 0) + int(u.get("thoughtsTokenCount") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion,
                 total_tokens=int(u.get("totalTokenCount") or prompt + completion),
                 cached_tokens=int(u.get("cachedContentTokenCount") or 0))


def tool_call(part: dict[str, Any]) -> dict[str, Any]:
    """A functionCall part -> an OpenAI tool call. Gemini sends whole calls; a thought signature rides along
    in `extra_content.google.thought_signature` (the field Google's own OpenAI endpoint uses) so clients that
    echo the assistant message back let us return it, as Gemini 3 requires."""
    fc = part["functionCall"]
    cid = fc.get("id") if isinstance(fc.get("id"), str) and fc.get("id") else "call_" + uuid.uuid4().hex[:24]
    out: dict[str, Any] = {"id": cid, "type": "function",
                           "function": {"name": fc.get("name") or "", "arguments": orjson.dumps(
                               fc.get("args") or {}).decode()}}
    sig = part.get("thoughtSignature")
    if isinstance(sig, str) and sig:
        out["extra_content"] = {"google": {"thought_signature": sig}}
    return out


def _text(part: dict[str, Any]) -> str | None:
    t = part.get("text")
    return t if isinstance(t, str) and t and part.get("thought") is not True else None


def choice(cand: dict[str, Any]) -> dict[str, Any]:
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for part in (cand.get("content") or {}).get("parts") or []:
        if isinstance(part.get("functionCall"), dict):
            calls.append(tool_call(part))
        elif (t := _text(part)) is not None:
            texts.append(t)
    message: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        message["tool_calls"] = calls
    return {"index": int(cand.get("index") or 0), "message": message, "logprobs": None,
            "finish_reason": finish_reason(cand.get("finishReason") or "STOP", bool(calls))}


def response_body(data: dict[str, Any], model: str) -> tuple[bytes, Usage]:
    """A whole GenerateContentResponse -> chat.completion bytes. A blocked prompt (no candidates, a
    promptFeedback.blockReason) is an empty answer with finish_reason content_filter, as OpenAI does."""
    usage = usage_from_gemini(data.get("usageMetadata")) or Usage(estimated=True)
    cands = data.get("candidates") or []
    if cands:
        choices = sorted((choice(c) for c in cands), key=lambda c: c["index"])
    else:
        choices = [{"index": 0, "message": {"role": "assistant", "content": ""}, "logprobs": None,
                    "finish_reason": "content_filter"}]
    rid = data.get("responseId")
    return completion_body(id="chatcmpl-" + rid if isinstance(rid, str) and rid else new_id(),
                           model=data.get("modelVersion") or model, message=choices[0]["message"],
                           finish_reason=choices[0]["finish_reason"], usage=usage,
                           extra={"choices": choices}), usage


class GeminiStream:
    """Per request. Each SSE event is one GenerateContentResponse; text and whole function calls become
    OpenAI deltas, finishReason a finish chunk; usage is the last usageMetadata seen."""

    __slots__ = ("_calls", "_error", "_finished", "_on_error", "_sse", "_started", "_w", "usage")

    def __init__(self, model: str, include_usage: bool, on_error: Callable[[dict[str, Any]], UpstreamError]) -> None:
        self._sse = SSEDecoder()
        self._w = ChunkWriter(model, include_usage)
        self._on_error = on_error
        self._started: set[int] = set()
        self._calls: dict[int, int] = {}
        self._finished: dict[int, str] = {}
        self._error: UpstreamError | None = None     # raised on the next call, after the bytes before it
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self._error is not None:
            raise self._error
        return self._events(self._sse.feed(data))

    def finish(self) -> bytes:
        if self._error is not None:
            raise self._error
        out = self._events(self._sse.flush())
        if self._error is not None:
            raise self._error
        if not self._finished:
            raise UpstreamError("the Gemini stream ended without a finishReason")
        if self.usage is None:
            self.usage = Usage(estimated=True)
        return out + self._w.usage(self.usage) + DONE

    def _events(self, events: list[Event]) -> bytes:
        out: list[bytes] = []
        for ev in events:
            if not ev.data or ev.data == "[DONE]":
                continue
            try:
                self._event(_decode(ev.data), out)
            except UpstreamError as e:
                if not out:
                    raise
                self._error = e                  # deliver the deltas already decoded, then fail
                break
        return b"".join(out)

    def _event(self, obj: dict[str, Any], out: list[bytes]) -> None:
        if isinstance(obj.get("error"), dict):
            raise self._on_error(obj)
        if not self._started and isinstance(obj.get("modelVersion"), str):
            self._w.model = obj["modelVersion"]          # the served version, as in non-streamed answers
        u = usage_from_gemini(obj.get("usageMetadata"))
        if u is not None:
            self.usage = u
        cands = obj.get("candidates") or []
        if not cands and (obj.get("promptFeedback") or {}).get("blockReason"):
            self._start(0, out)
            self._finished[0] = "content_filter"
            out.append(self._w.delta({}, "content_filter"))
            return
        w = self._w
        for cand in cands:
            idx = int(cand.get("index") or 0)
            self._start(idx, out)
            for part in (cand.get("content") or {}).get("parts") or []:
                if isinstance(part.get("functionCall"), dict):
                    k = self._calls.get(idx, 0)
                    self._calls[idx] = k + 1
                    out.append(w.delta({"tool_calls": [{"index": k, **tool_call(part)}]}, index=idx))
                elif (t := _text(part)) is not None:
                    out.append(w.delta({"content": t}, index=idx))
            raw = cand.get("finishReason")
            if raw and idx not in self._finished:
                reason = finish_reason(raw, self._calls.get(idx, 0) > 0)
                self._finished[idx] = reason
                out.append(w.delta({}, reason, index=idx))

    def _start(self, idx: int, out: list[bytes]) -> None:
        if idx not in self._started:
            self._started.add(idx)
            out.append(self._w.delta({"role": "assistant", "content": ""}, index=idx))


def _decode(data: str) -> dict[str, Any]:
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise UpstreamError("the Gemini stream sent an event that is not JSON") from None
    if not isinstance(obj, dict):
        raise UpstreamError("the Gemini stream sent an event that is not a JSON object")
    return obj
