"""OpenAI chat request -> Anthropic Messages request body, limited to what the configured API version accepts.

Field names follow the official SDK's `MessageCreateParams` (anthropic/types/message_create_params.py).
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.errors import InvalidRequest

# Optional top-level Messages params this adapter may send, per `anthropic-version`. A version not listed
# uses the newest entry dated on or before it. 2026-10-21 answers 400 "Extra inputs are not permitted" to
# any field it does not define, sampling params included, even at their default values.
_COMMON = frozenset({"system", "stop_sequences", "tools", "tool_choice", "metadata", "stream"})
VERSION_PARAMS: dict[str, frozenset[str]] = {
    "2023-06-01": _COMMON | {"temperature", "top_p", "top_k"},
    "2026-10-21": _COMMON,
}

# OpenAI request fields this adapter translates; any other field has no Anthropic equivalent.
MAPPED = frozenset({"model", "messages", "max_tokens", "max_completion_tokens", "stop", "temperature", "top_p",
                    "top_k", "tools", "tool_choice", "parallel_tool_calls", "response_format", "user", "stream",
                    "stream_options"})
# Unsupported fields whose value asks for nothing beyond the default: ignoring them changes nothing.
NOOP_VALUES: dict[str, tuple[Any, ...]] = {"n": (1,), "logprobs": (False,), "presence_penalty": (0,),
                                           "frequency_penalty": (0,), "store": (False,)}
SAMPLING = ("temperature", "top_p", "top_k")
ANSWER_TOOL = "json_response"
IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)(?:;[^,]*)?;base64,(.*)$", re.S)


def accepted_params(version: str) -> frozenset[str]:
    """The optional params `version` accepts (dates compare as strings)."""
    known = sorted(VERSION_PARAMS)
    best = known[0]
    for v in known:
        if v <= version:
            best = v
    return VERSION_PARAMS[best]


def answer_tool(body: dict[str, Any]) -> dict[str, Any] | None:
    """`response_format` json_schema / json_object as a tool the model is made to call; its input is the answer."""
    rf = body.get("response_format")
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_schema":
        raw = rf.get("json_schema")
        js: dict[str, Any] = raw if isinstance(raw, dict) else {}
        name = js.get("name") if isinstance(js.get("name"), str) and js.get("name") else ANSWER_TOOL
        schema = js.get("schema") if isinstance(js.get("schema"), dict) else {"type": "object"}
        desc = js.get("description") or "Give the answer as this tool's input, matching its schema."
        return {"name": name, "description": desc, "input_schema": schema}
    if rf.get("type") == "json_object":
        return {"name": ANSWER_TOOL, "description": "Give the answer as this tool's input: a JSON object.",
                "input_schema": {"type": "object", "additionalProperties": True}}
    return None


def answer_tool_name(body: dict[str, Any]) -> str | None:
    tool = answer_tool(body)
    return tool["name"] if tool else None


def unsupported(body: dict[str, Any], accepted: frozenset[str]) -> list[str]:
    """Request fields that cannot be sent to this version, in request order."""
    out: list[str] = []
    for k, v in body.items():
        if v is None:
            continue
        if k in SAMPLING:
            if k not in accepted:
                out.append(k)
        elif k not in MAPPED and v not in NOOP_VALUES.get(k, ()):
            out.append(k)
    return out


def build_body(body: dict[str, Any], model: str, accepted: frozenset[str], default_max_tokens: int,
               stream: bool) -> dict[str, Any]:
    """The Anthropic body for an OpenAI `body` already cleaned of proxy fields."""
    system, messages = convert_messages(body.get("messages") or [])
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    out: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "messages": messages}
    if system:
        out["system"] = system
    stop = body.get("stop")
    if isinstance(stop, str) and stop:
        out["stop_sequences"] = [stop]
    elif isinstance(stop, list) and stop:
        out["stop_sequences"] = [s for s in stop if isinstance(s, str) and s]
    for k in SAMPLING:
        if body.get(k) is not None and k in accepted:
            out[k] = body[k]
    _tools(body, out)
    user = body.get("user")
    if isinstance(user, str) and user:
        out["metadata"] = {"user_id": user}
    if stream:
        out["stream"] = True
    return out


def _tools(body: dict[str, Any], out: dict[str, Any]) -> None:
    tools = [_tool(t, i) for i, t in enumerate(body.get("tools") or [])]
    choice: dict[str, Any] | None = None
    tc = body.get("tool_choice")
    if tools and tc is not None:
        choice = _tool_choice(tc)
    answer = answer_tool(body)
    if answer is not None:
        # With the client's own tools too, the model must call one of them or answer through ours.
        choice = {"type": "any"} if tools else {"type": "tool", "name": answer["name"]}
        tools.append(answer)
    if not tools:
        return
    out["tools"] = tools
    if body.get("parallel_tool_calls") is False and (choice is None or choice["type"] != "none"):
        choice = {**(choice or {"type": "auto"}), "disable_parallel_tool_use": True}
    if choice is not None:
        out["tool_choice"] = choice


def _tool(t: Any, i: int) -> dict[str, Any]:
    fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
        raise InvalidRequest(f"Invalid 'tools[{i}]': only function tools with a name are supported by this "
                             "provider.", param=f"tools[{i}]", code="invalid_value")
    tool: dict[str, Any] = {"name": fn["name"],
                            "input_schema": fn.get("parameters") or {"type": "object", "properties": {}}}
    if fn.get("description"):
        tool["description"] = fn["description"]
    if fn.get("strict") is True:
        tool["strict"] = True
    return tool


def _tool_choice(tc: Any) -> dict[str, Any]:
    if tc == "auto":
        return {"type": "auto"}
    if tc == "none":
        return {"type": "none"}
    if tc == "required":
        return {"type": "any"}
    if isinstance(tc, dict) and isinstance(tc.get("function"), dict) and tc["function"].get("name"):
        return {"type": "tool", "name": tc["function"]["name"]}
    raise InvalidRequest("Invalid 'tool_choice': expected 'auto', 'none', 'required' or a named function.",
                         param="tool_choice", code="invalid_value")


def convert_messages(msgs: list[Any]) -> tuple[str | list[dict[str, Any]], list[dict[str, Any]]]:
    """System/developer messages -> top-level `system`; the rest -> alternating user/assistant turns.
    Consecutive same-role turns are merged, so consecutive tool results become one user message."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    for i, m in enumerate(msgs):
        role, where = m.get("role"), f"messages[{i}]"
        if role in ("system", "developer"):
            system.extend(_parts(m.get("content"), where, allow_images=False))
        elif role == "user":
            _append(out, "user", _parts(m.get("content"), where))
        elif role == "assistant":
            _append(out, "assistant", _assistant(m, where))
        elif role == "tool":
            _append(out, "user", [_tool_result(m, where)])
        else:
            raise InvalidRequest(f"Invalid '{where}.role': '{role}' is not supported by this provider; "
                                 "use tools.", param=f"{where}.role", code="invalid_value")
    for m in out:
        c = m["content"]
        if len(c) == 1 and c[0].keys() == {"type", "text"}:
            m["content"] = c[0]["text"]
    if len(system) == 1 and system[0].keys() == {"type", "text"}:
        return system[0]["text"], out
    return system, out


def _append(out: list[dict[str, Any]], role: str, blocks: list[dict[str, Any]]) -> None:
    if not blocks:
        return
    if out and out[-1]["role"] == role:
        out[-1]["content"].extend(blocks)
    else:
        out.append({"role": role, "content": list(blocks)})


def _parts(content: Any, where: str, allow_images: bool = True) -> list[dict[str, Any]]:
    if content is None:
        return []
    if isinstance(content, str):
        return [{"type": "text", "text": content}] if content else []
    blocks: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        at = f"{where}.content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind in ("text", "refusal"):
            text = p.get(kind)
            if isinstance(text, str) and text:
                block: dict[str, Any] = {"type": "text", "text": text}
                if isinstance(p.get("cache_control"), dict):
                    block["cache_control"] = p["cache_control"]
                blocks.append(block)
        elif kind == "image_url" and allow_images:
            blocks.append(_image(p.get("image_url"), at))
        elif kind == "file" and allow_images:
            blocks.append(_document(p.get("file"), at))
        else:
            raise InvalidRequest(f"Invalid '{at}': content part type {kind!r} is not supported by this provider.",
                                 param=at, code="invalid_value")
    return blocks


def _image(spec: Any, at: str) -> dict[str, Any]:
    url = spec.get("url") if isinstance(spec, dict) else spec
    if not isinstance(url, str):
        raise InvalidRequest(f"Invalid '{at}.image_url': expected an object with a url.", param=at,
                             code="invalid_type")
    m = _DATA_URL.match(url)
    if m:
        if m.group(1) not in IMAGE_TYPES:
            raise InvalidRequest(f"Invalid '{at}': image type {m.group(1)} is not supported (jpeg, png, gif, "
                                 "webp).", param=at, code="invalid_value")
        return {"type": "image", "source": {"type": "base64", "media_type": m.group(1), "data": m.group(2)}}
    if url.startswith(("https://", "http://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    raise InvalidRequest(f"Invalid '{at}': an image must be an https URL or a base64 data: URL.", param=at,
                         code="invalid_value")


def _document(spec: Any, at: str) -> dict[str, Any]:
    data = spec.get("file_data") if isinstance(spec, dict) else None
    m = _DATA_URL.match(data) if isinstance(data, str) else None
    if not m or m.group(1) != "application/pdf":
        raise InvalidRequest(f"Invalid '{at}': only PDF files given as base64 file_data are supported.",
                             param=at, code="invalid_value")
    return {"type": "document", "source": {"type": "base64", "media_type": "application/pdf", "data": m.group(2)}}


def _assistant(m: dict[str, Any], where: str) -> list[dict[str, Any]]:
    blocks = _parts(m.get("content"), where, allow_images=False)
    for k, call in enumerate(m.get("tool_calls") or []):
        fn = call.get("function") if isinstance(call, dict) else None
        if not isinstance(fn, dict) or not call.get("id") or not fn.get("name"):
            raise InvalidRequest(f"Invalid '{where}.tool_calls[{k}]': expected id and function.name.",
                                 param=f"{where}.tool_calls[{k}]", code="invalid_value")
        try:
            args = orjson.loads(fn.get("arguments") or "{}")
        except orjson.JSONDecodeError:
            args = None
        if not isinstance(args, dict):
            raise InvalidRequest(f"Invalid '{where}.tool_calls[{k}].function.arguments': expected a JSON object.",
                                 param=f"{where}.tool_calls[{k}].function.arguments", code="invalid_value")
        blocks.append({"type": "tool_use", "id": call["id"], "name": fn["name"], "input": args})
    return blocks


def _tool_result(m: dict[str, Any], where: str) -> dict[str, Any]:
    tid = m.get("tool_call_id")
    if not isinstance(tid, str) or not tid:
        raise InvalidRequest(f"Missing '{where}.tool_call_id'.", param=f"{where}.tool_call_id",
                             code="missing_required_parameter")
    content = m.get("content")
    block: dict[str, Any] = {"type": "tool_result", "tool_use_id": tid}
    if isinstance(content, str):
        block["content"] = content
    elif content:
        block["content"] = _parts(content, where)
    return block
