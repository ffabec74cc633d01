"""OpenAI chat request <-> Bedrock Converse JSON (shapes from botocore's bedrock-runtime service model).

Pure dict work, no signing and no I/O: `converse_body` builds the request, `completion_from_converse`
reads the answer. The stream translator lives in bedrock_stream.py.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from proxy.context import Usage
from proxy.errors import InvalidRequest

# OpenAI request fields this adapter maps; everything else is "unsupported" (dropped or rejected).
MAPPED = frozenset({"model", "messages", "stream", "stream_options", "max_tokens", "max_completion_tokens",
                    "temperature", "top_p", "stop", "tools", "tool_choice"})
# Fields whose value is the default and so means nothing to drop.
NO_OP = {"n": 1, "parallel_tool_calls": True}

FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls",
          "guardrail_intervened": "content_filter", "content_filtered": "content_filter"}

IMAGE_FORMATS = {"image/png": "png", "image/jpeg": "jpeg", "image/jpg": "jpeg", "image/gif": "gif",
                 "image/webp": "webp"}
_DATA_URL = re.compile(r"data:([^;,]+);base64,(.*)", re.S)


def finish_reason(stop_reason: Any) -> str:
    return FINISH.get(stop_reason, "stop") if isinstance(stop_reason, str) else "stop"


def unsupported_params(body: dict[str, Any]) -> list[str]:
    return sorted(k for k, v in body.items()
                  if k not in MAPPED and v is not None and not (k in NO_OP and v == NO_OP[k]))


def converse_body(body: dict[str, Any]) -> dict[str, Any]:
    """The Converse / ConverseStream JSON body (modelId goes in the URL)."""
    system, messages, has_tool_blocks = _messages(body.get("messages") or [])
    out: dict[str, Any] = {"messages": messages}
    if system:
        out["system"] = system
    inference = _inference_config(body)
    if inference:
        out["inferenceConfig"] = inference
    tool_config = _tool_config(body, has_tool_blocks)
    if tool_config:
        out["toolConfig"] = tool_config
    return out


def _inference_config(body: dict[str, Any]) -> dict[str, Any]:
    cfg: dict[str, Any] = {}
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None:
        cfg["maxTokens"] = max_tokens
    if body.get("temperature") is not None:
        cfg["temperature"] = body["temperature"]
    if body.get("top_p") is not None:
        cfg["topP"] = body["top_p"]
    stop = body.get("stop")
    if isinstance(stop, str):
        cfg["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        cfg["stopSequences"] = [s for s in stop if isinstance(s, str)]
    return cfg


def _tool_config(body: dict[str, Any], has_tool_blocks: bool) -> dict[str, Any] | None:
    """`tool_choice: none` has no Converse equivalent: tools are left out, unless the history holds
    toolUse/toolResult blocks (Bedrock then requires a toolConfig), in which case they stay on auto."""
    tools = body.get("tools")
    if not isinstance(tools, list) or not tools:
        return None
    choice = body.get("tool_choice")
    if choice == "none" and not has_tool_blocks:
        return None
    specs = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest("Each tool needs a function with a name.", param=f"tools[{i}].function")
        spec: dict[str, Any] = {"name": fn["name"],
                                "inputSchema": {"json": fn.get("parameters") or {"type": "object",
                                                                                 "properties": {}}}}
        if fn.get("description"):
            spec["description"] = fn["description"]
        specs.append({"toolSpec": spec})
    cfg: dict[str, Any] = {"tools": specs}
    if choice == "auto":
        cfg["toolChoice"] = {"auto": {}}
    elif choice == "required":
        cfg["toolChoice"] = {"any": {}}
    elif isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name")
        if not isinstance(name, str):
            raise InvalidRequest("tool_choice must name a function.", param="tool_choice")
        cfg["toolChoice"] = {"tool": {"name": name}}
    return cfg


def _messages(msgs: list[Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]], bool]:
    """System text blocks, and user/assistant messages with consecutive same-role turns merged
    (Bedrock wants alternating roles; tool results travel as user turns)."""
    system: list[dict[str, Any]] = []
    out: list[dict[str, Any]] = []
    has_tools = False
    for i, m in enumerate(msgs):
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(m.get("content"), f"messages[{i}].content") if t)
            continue
        if role == "user":
            blocks, wire_role = _user_blocks(m.get("content"), i), "user"
        elif role == "assistant":
            blocks, wire_role = _assistant_blocks(m, i), "assistant"
            has_tools = has_tools or any("toolUse" in b for b in blocks)
        elif role == "tool":
            blocks, wire_role = [_tool_result(m, i)], "user"
            has_tools = True
        else:
            raise InvalidRequest(f"Role '{role}' is not supported by this model's provider.",
                                 param=f"messages[{i}].role")
        if not blocks:
            continue
        if out and out[-1]["role"] == wire_role:
            out[-1]["content"].extend(blocks)
        else:
            out.append({"role": wire_role, "content": blocks})
    return system, out, has_tools


def _texts(content: Any, where: str) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        texts = []
        for j, p in enumerate(content):
            if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
                raise InvalidRequest("Only text content is supported here.", param=f"{where}[{j}]")
            texts.append(p["text"])
        return texts
    raise InvalidRequest("Content must be a string or a list of parts.", param=where)


def _user_blocks(content: Any, i: int) -> list[dict[str, Any]]:
    if isinstance(content, str):
        return [{"text": content}] if content else []
    if not isinstance(content, list):
        raise InvalidRequest("Content must be a string or a list of parts.", param=f"messages[{i}].content")
    blocks: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        ptype = p.get("type") if isinstance(p, dict) else None
        if ptype == "text" and isinstance(p.get("text"), str):
            if p["text"]:
                blocks.append({"text": p["text"]})
        elif ptype == "image_url":
            blocks.append(_image(p.get("image_url"), where))
        else:
            raise InvalidRequest(f"Content part type '{ptype}' is not supported by this model's provider.",
                                 param=where)
    return blocks


def _image(image_url: Any, where: str) -> dict[str, Any]:
    """Converse takes image bytes, not links: only `data:image/...;base64,` URLs are accepted. The
    base64 text is passed on as is (the JSON protocol carries blobs base64-encoded)."""
    url = image_url.get("url") if isinstance(image_url, dict) else image_url
    m = _DATA_URL.fullmatch(url) if isinstance(url, str) else None
    if m is None:
        raise InvalidRequest("This model's provider (Bedrock) needs images inline: send a "
                             "data:image/...;base64,... URL instead of a link.", param=f"{where}.image_url")
    fmt = IMAGE_FORMATS.get(m.group(1).lower())
    if fmt is None:
        raise InvalidRequest(f"Image type '{m.group(1)}' is not supported (png, jpeg, gif, webp).",
                             param=f"{where}.image_url")
    return {"image": {"format": fmt, "source": {"bytes": m.group(2).strip()}}}


def _assistant_blocks(m: dict[str, Any], i: int) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = [{"text": t} for t in _texts(m.get("content"), f"messages[{i}].content")
                                    if t]
    for k, tc in enumerate(m.get("tool_calls") or []):
        where = f"messages[{i}].tool_calls[{k}]"
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not isinstance(tc.get("id"), str):
            raise InvalidRequest("A tool call needs an id and a function name.", param=where)
        args = fn.get("arguments") or "{}"
        try:
            parsed = orjson.loads(args) if isinstance(args, str) else args
        except orjson.JSONDecodeError:
            raise InvalidRequest("Tool call arguments must be a JSON object.",
                                 param=f"{where}.function.arguments") from None
        if not isinstance(parsed, dict):
            raise InvalidRequest("Tool call arguments must be a JSON object.",
                                 param=f"{where}.function.arguments")
        blocks.append({"toolUse": {"toolUseId": tc["id"], "name": fn["name"], "input": parsed}})
    return blocks


def _tool_result(m: dict[str, Any], i: int) -> dict[str, Any]:
    tool_id = m.get("tool_call_id")
    if not isinstance(tool_id, str):
        raise InvalidRequest("A tool message needs tool_call_id.", param=f"messages[{i}].tool_call_id")
    texts = _texts(m.get("content"), f"messages[{i}].content")
    return {"toolResult": {"toolUseId": tool_id, "content": [{"text": t} for t in texts] or [{"text": ""}]}}


def usage_from_converse(u: Any) -> Usage | None:
    """`inputTokens` counts only uncached input; OpenAI's prompt_tokens includes cache reads and writes."""
    if not isinstance(u, dict):
        return None
    read = int(u.get("cacheReadInputTokens") or 0)
    write = int(u.get("cacheWriteInputTokens") or 0)
    prompt = int(u.get("inputTokens") or 0) + read + write
    completion = int(u.get("outputTokens") or 0)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                 cached_tokens=read, cache_write_tokens=write)


def message_from_converse(msg: Any) -> dict[str, Any]:
    """Text blocks joined into `content`; toolUse blocks become `tool_calls` (reasoning is not exposed)."""
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    for block in (msg.get("content") if isinstance(msg, dict) else None) or []:
        if not isinstance(block, dict):
            continue
        if isinstance(block.get("text"), str):
            texts.append(block["text"])
        elif isinstance(block.get("toolUse"), dict):
            tu = block["toolUse"]
            calls.append({"id": tu.get("toolUseId"), "type": "function",
                          "function": {"name": tu.get("name"),
                                       "arguments": orjson.dumps(tu.get("input") or {}).decode()}})
    out: dict[str, Any] = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if calls:
        out["tool_calls"] = calls
    return out


def completion_parts(data: dict[str, Any]) -> tuple[dict[str, Any], str, Usage]:
    """A ConverseResponse -> (OpenAI message, finish_reason, usage)."""
    output = data.get("output")
    message = message_from_converse(output.get("message") if isinstance(output, dict) else None)
    usage = usage_from_converse(data.get("usage")) or Usage(estimated=True)
    return message, finish_reason(data.get("stopReason")), usage
