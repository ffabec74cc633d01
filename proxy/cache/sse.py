"""Stream <-> JSON for cached answers: split a finished stream into events, assemble the JSON answer a
non-stream client gets, and synthesise chunk events for a stream client from a stored JSON answer.

These run once per stored stream or per converted hit, never per relayed chunk."""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.context import Usage
from proxy.streaming.chunks import DONE

_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")


def split_events(data: bytes) -> list[bytes]:
    """Events with their own terminators, so joining them gives back `data` exactly."""
    events: list[bytes] = []
    pos = 0
    for m in _BOUNDARY.finditer(data):
        events.append(data[pos:m.end()])
        pos = m.end()
    if pos < len(data):
        events.append(data[pos:])
    return events


def event_json(event: bytes) -> Any:
    """The JSON payload of a `data:` event, or None (comments, [DONE], error events, junk)."""
    lines = event.splitlines()
    if any(line.startswith(b"event:") and line[6:].strip() not in (b"", b"message") for line in lines):
        return None
    payload = b"".join(line[5:].strip() for line in lines if line.startswith(b"data:"))
    if not payload or payload == b"[DONE]":
        return None
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def is_done(event: bytes) -> bool:
    return event.strip() == b"data: [DONE]" or event.strip() == b"data:[DONE]"


def is_usage_only(obj: Any) -> bool:
    return isinstance(obj, dict) and obj.get("choices") == [] and isinstance(obj.get("usage"), dict)


def assemble(events: list[bytes], usage: Usage | None) -> bytes | None:
    """The `chat.completion` body equivalent to a stream of `chat.completion.chunk` events."""
    head: dict[str, Any] = {}
    choices: dict[int, dict[str, Any]] = {}
    for ev in events:
        obj = event_json(ev)
        if not isinstance(obj, dict):
            continue
        if not head:
            head = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if k in obj}
        for ch in obj.get("choices") or ():
            if isinstance(ch, dict):
                _merge(choices.setdefault(int(ch.get("index") or 0), {"message": {}, "finish_reason": None}), ch)
    if not head:
        return None
    out: dict[str, Any] = {"id": head.get("id", ""), "object": "chat.completion", "created": head.get("created", 0),
                           "model": head.get("model", "")}
    out["choices"] = [{"index": i, "message": {"role": "assistant", "content": None, **c["message"]},
                       "logprobs": None, "finish_reason": c["finish_reason"]} for i, c in sorted(choices.items())]
    for c in out["choices"]:
        calls = c["message"].get("tool_calls")
        if calls is not None:
            c["message"]["tool_calls"] = [calls[k] for k in sorted(calls)]
    if usage is not None:
        out["usage"] = usage.openai()
    if "system_fingerprint" in head:
        out["system_fingerprint"] = head["system_fingerprint"]
    return orjson.dumps(out)


def _merge(acc: dict[str, Any], ch: dict[str, Any]) -> None:
    if ch.get("finish_reason"):
        acc["finish_reason"] = ch["finish_reason"]
    delta = ch.get("delta")
    if not isinstance(delta, dict):
        return
    msg = acc["message"]
    for k, v in delta.items():
        if v is None:
            continue
        if k in ("content", "refusal", "reasoning_content") and isinstance(v, str):
            msg[k] = (msg.get(k) or "") + v
        elif k == "tool_calls" and isinstance(v, list):
            calls = msg.setdefault("tool_calls", {})
            for tc in v:
                if not isinstance(tc, dict):
                    continue
                slot = calls.setdefault(int(tc.get("index") or 0), {"id": "", "type": "function",
                                                                     "function": {"name": "", "arguments": ""}})
                if tc.get("id"):
                    slot["id"] = tc["id"]
                if tc.get("type"):
                    slot["type"] = tc["type"]
                fn = tc.get("function") or {}
                slot["function"]["name"] += fn.get("name") or ""
                slot["function"]["arguments"] += fn.get("arguments") or ""
        elif k != "role" or "role" not in msg:
            msg[k] = v


def _chunk(head: dict[str, Any], choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> bytes:
    obj = {**head, "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def synthesise(body: bytes) -> tuple[list[bytes], bytes | None]:
    """Chunk events (ending with [DONE]) and the usage-only event for a stored JSON answer."""
    data = orjson.loads(body)
    head = {k: data[k] for k in ("id", "created", "model", "system_fingerprint") if k in data}
    events: list[bytes] = []
    for ch in data.get("choices") or ():
        idx = ch.get("index", 0)
        msg = dict(ch.get("message") or {})
        calls = msg.pop("tool_calls", None)
        content = msg.pop("content", None)
        delta = {"role": msg.pop("role", "assistant"), "content": "" if content is None and not calls else content,
                 **{k: v for k, v in msg.items() if v is not None}}
        events.append(_chunk(head, [{"index": idx, "delta": delta, "logprobs": None, "finish_reason": None}]))
        if calls:
            tcs = [{"index": i, **tc} for i, tc in enumerate(calls)]
            events.append(_chunk(head, [{"index": idx, "delta": {"tool_calls": tcs}, "logprobs": None,
                                         "finish_reason": None}]))
        events.append(_chunk(head, [{"index": idx, "delta": {}, "logprobs": None,
                                     "finish_reason": ch.get("finish_reason") or "stop"}]))
    events.append(DONE)
    usage = data.get("usage")
    return events, _chunk(head, [], usage) if isinstance(usage, dict) else None


def usage_event_for(events: list[bytes], usage: Usage) -> bytes:
    """A usage-only chunk for a stored stream whose client had not asked for one."""
    for ev in events:
        obj = event_json(ev)
        if isinstance(obj, dict):
            head = {k: obj[k] for k in ("id", "created", "model", "system_fingerprint") if k in obj}
            return _chunk(head, [], usage.openai())
    return _chunk({}, [], usage.openai())
