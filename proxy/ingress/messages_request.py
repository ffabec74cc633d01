"""Anthropic Messages request (SDK `MessageCreateParams`) -> OpenAI chat body, validated on the way.

The mirror image of proxy/providers/anthropic/request.py. Blocks with no chat form for a converted target
(thinking, redacted_thinking: the model's own, dropped on the way out; server tools) are dropped or refused
with a 400 naming the field. The client's bytes stay in `call.raw_body` for Anthropic targets.
"""

from __future__ import annotations

from typing import Any

import orjson

from proxy.context import ChatCall
from proxy.errors import InvalidRequest

TOOL_CHOICE = {"auto": "auto", "any": "required", "none": "none"}


def _bad(field: str, what: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"{field}: {what}", param=field, code=code)


def validate_messages(call: ChatCall) -> None:
    """Check the Anthropic body and put its chat form in `call.body`."""
    body = call.body
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _bad("model", "Field required" if model is None else "Input should be a string",
                   "missing_required_parameter" if model is None else "invalid_type")
    mt = body.get("max_tokens")
    if isinstance(mt, bool) or not isinstance(mt, int) or mt < 1:
        raise _bad("max_tokens", "Field required" if mt is None else "Input should be an integer of at least 1",
                   "missing_required_parameter" if mt is None else "invalid_value")
    msgs = body.get("messages")
    if not isinstance(msgs, list) or not msgs:
        raise _bad("messages", "Field required" if msgs is None else "expected a non-empty list of messages",
                   "missing_required_parameter" if msgs is None else "invalid_value")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise _bad("stream", "Input should be a valid boolean", "invalid_type")
    chat: dict[str, Any] = {"model": model, "messages": _system(body.get("system")), "max_tokens": mt}
    for i, m in enumerate(msgs):
        _message(m, f"messages.{i}", chat["messages"])
    for name in ("temperature", "top_p"):
        v = body.get(name)
        if v is not None:
            if isinstance(v, bool) or not isinstance(v, int | float):
                raise _bad(name, "Input should be a valid number", "invalid_type")
            chat[name] = v
    stop = body.get("stop_sequences")
    if stop is not None:
        if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
            raise _bad("stop_sequences", "Input should be a list of strings", "invalid_type")
        if stop:
            chat["stop"] = stop
    md = body.get("metadata")
    if isinstance(md, dict) and isinstance(md.get("user_id"), str):
        chat["user"] = md["user_id"]
    _tools(body, chat)
    if isinstance(body.get("cache"), bool):
        chat["cache"] = body["cache"]             # the gateway's own opt-in (never sent upstream)
    if stream:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}     # message_delta carries the final usage
    call.body, call.model, call.stream = chat, model, stream


def _system(system: Any) -> list[dict[str, Any]]:
    if system is None or system == "":
        return []
    if isinstance(system, str):
        return [{"role": "system", "content": system}]
    if isinstance(system, list):
        parts = [_text(b, f"system.{i}") for i, b in enumerate(system)]
        return [{"role": "system", "content": parts}] if parts else []
    raise _bad("system", "Input should be a string or a list of text blocks", "invalid_type")


def _text(block: Any, at: str) -> dict[str, Any]:
    if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
        raise _bad(at, "expected a text block")
    part: dict[str, Any] = {"type": "text", "text": block["text"]}
    if isinstance(block.get("cache_control"), dict):
        part["cache_control"] = block["cache_control"]
    return part


def _message(m: Any, at: str, out: list[dict[str, Any]]) -> None:
    if not isinstance(m, dict):
        raise _bad(at, "expected an object", "invalid_type")
    role, content = m.get("role"), m.get("content")
    if role not in ("user", "assistant"):
        raise _bad(f"{at}.role", "Input should be 'user' or 'assistant'")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise _bad(f"{at}.content", "Input should be a string or a list of content blocks", "invalid_type")
    if role == "assistant":
        out.append(_assistant(content, f"{at}.content"))
        return
    parts: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        where = f"{at}.content.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "tool_result":
            out.append(_tool_result(b, where))
        elif kind == "text":
            parts.append(_text(b, where))
        elif kind == "image":
            parts.append(_image(b.get("source"), where))
        elif kind == "document":
            parts.append(_document(b.get("source"), where))
        else:
            raise _bad(where, f"content block type {kind!r} is not supported for this model")
    if parts:
        out.append({"role": "user", "content": parts})


def _assistant(content: list[Any], at: str) -> dict[str, Any]:
    text: list[str] = []
    calls: list[dict[str, Any]] = []
    for j, b in enumerate(content):
        where = f"{at}.{j}"
        kind = b.get("type") if isinstance(b, dict) else None
        if kind == "text" and isinstance(b.get("text"), str):
            text.append(b["text"])
        elif kind == "tool_use":
            if not isinstance(b.get("id"), str) or not isinstance(b.get("name"), str):
                raise _bad(where, "a tool_use block needs an id and a name")
            calls.append({"id": b["id"], "type": "function",
                          "function": {"name": b["name"], "arguments": orjson.dumps(b.get("input") or {}).decode()}})
        elif kind in ("thinking", "redacted_thinking"):
            continue                   # the model's own reasoning: only Anthropic can read it back
        else:
            raise _bad(where, f"content block type {kind!r} is not supported for this model")
    msg: dict[str, Any] = {"role": "assistant", "content": "".join(text) if text else None}
    if calls:
        msg["tool_calls"] = calls
    return msg


def _tool_result(b: dict[str, Any], at: str) -> dict[str, Any]:
    tid = b.get("tool_use_id")
    if not isinstance(tid, str) or not tid:
        raise _bad(f"{at}.tool_use_id", "Field required", "missing_required_parameter")
    content = b.get("content")
    if content is None or isinstance(content, str):
        text = content or ""
    elif isinstance(content, list):
        text = "".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    else:
        raise _bad(f"{at}.content", "Input should be a string or a list of blocks", "invalid_type")
    if b.get("is_error") is True:
        text = "Error: " + text
    return {"role": "tool", "tool_call_id": tid, "content": text}


def _image(src: Any, at: str) -> dict[str, Any]:
    if isinstance(src, dict) and src.get("type") == "base64" and isinstance(src.get("data"), str) \
            and isinstance(src.get("media_type"), str):
        url = f"data:{src['media_type']};base64,{src['data']}"
    elif isinstance(src, dict) and src.get("type") == "url" and isinstance(src.get("url"), str):
        url = src["url"]
    else:
        raise _bad(f"{at}.source", "expected a base64 or url image source")
    return {"type": "image_url", "image_url": {"url": url}}


def _document(src: Any, at: str) -> dict[str, Any]:
    if isinstance(src, dict) and src.get("type") == "base64" and src.get("media_type") == "application/pdf" \
            and isinstance(src.get("data"), str):
        return {"type": "file", "file": {"filename": "document.pdf",
                                         "file_data": f"data:application/pdf;base64,{src['data']}"}}
    raise _bad(f"{at}.source", "only base64 PDF documents are supported for this model")


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "Input should be a list", "invalid_type")
        out = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str) or t.get("type") not in (None, "custom"):
                raise _bad(f"tools.{i}", "only custom tools (name, input_schema) are supported for this model")
            fn: dict[str, Any] = {"name": t["name"],
                                  "parameters": t.get("input_schema") or {"type": "object", "properties": {}}}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            if t.get("strict") is True:
                fn["strict"] = True
            out.append({"type": "function", "function": fn})
        if out:
            chat["tools"] = out
    tc = body.get("tool_choice")
    if tc is None or not chat.get("tools"):
        return                     # chat APIs refuse a tool_choice without tools
    kind = tc.get("type") if isinstance(tc, dict) else None
    if kind in TOOL_CHOICE:
        chat["tool_choice"] = TOOL_CHOICE[kind]
    elif kind == "tool" and isinstance(tc.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
    else:
        raise _bad("tool_choice", "expected a type of auto, any, tool or none")
    if tc.get("disable_parallel_tool_use") is True and chat.get("tools"):
        chat["parallel_tool_calls"] = False
