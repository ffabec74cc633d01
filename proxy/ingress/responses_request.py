"""Responses API request (SDK `ResponseCreateParams`) -> OpenAI chat body, validated on the way.

Input items: messages (input_text, input_image, input_file, output_text), function_call and
function_call_output; reasoning items are the model's own and are dropped. `instructions` become the
system message; `previous_response_id`'s stored conversation goes before the new input; `text.format`
becomes `response_format`; `reasoning.effort` becomes `reasoning_effort` (dropped by targets without it).
"""

from __future__ import annotations

from typing import Any

from proxy.context import ChatCall
from proxy.errors import InvalidRequest

ROLES = frozenset({"user", "system", "developer", "assistant"})


def _bad(param: str, what: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {what}", param=param, code=code)


def check_responses(body: dict[str, Any]) -> None:
    """The checks that need no stored conversation (also run before a pass-through)."""
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("You must provide a model parameter.", param="model",
                             code="missing_required_parameter" if model is None else "invalid_type")
    inp = body.get("input")
    if inp is not None and not isinstance(inp, str | list):
        raise _bad("input", "expected a string or an array of input items.", "invalid_type")
    if inp is None and body.get("previous_response_id") is None:
        raise InvalidRequest("Missing required parameter: 'input'.", param="input", code="missing_required_parameter")
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        raise _bad("stream", "expected a boolean.", "invalid_type")
    prev = body.get("previous_response_id")
    if prev is not None and (not isinstance(prev, str) or not prev):
        raise _bad("previous_response_id", "expected a string.", "invalid_type")
    mot = body.get("max_output_tokens")
    if mot is not None and (isinstance(mot, bool) or not isinstance(mot, int) or mot < 1):
        raise _bad("max_output_tokens", "expected an integer of at least 1.")


def to_chat(body: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
    """The chat body for `body`, continuing `history` (chat messages of earlier turns)."""
    messages: list[dict[str, Any]] = []
    instructions = body.get("instructions")
    if isinstance(instructions, str) and instructions:
        messages.append({"role": "system", "content": instructions})
    elif instructions is not None and not isinstance(instructions, str):
        raise _bad("instructions", "expected a string.", "invalid_type")
    messages += history
    inp = body.get("input")
    if isinstance(inp, str):
        messages.append({"role": "user", "content": inp})
    elif isinstance(inp, list):
        for i, item in enumerate(inp):
            _item(item, f"input[{i}]", messages)
    chat: dict[str, Any] = {"model": body["model"], "messages": messages}
    for name in ("temperature", "top_p", "parallel_tool_calls", "top_logprobs"):
        if body.get(name) is not None:
            chat[name] = body[name]
    if body.get("max_output_tokens") is not None:
        chat["max_completion_tokens"] = body["max_output_tokens"]
    user = body.get("safety_identifier") or body.get("user")
    if isinstance(user, str) and user:
        chat["user"] = user
    reasoning = body.get("reasoning")
    if isinstance(reasoning, dict) and isinstance(reasoning.get("effort"), str):
        chat["reasoning_effort"] = reasoning["effort"]
    _tools(body, chat)
    _format(body.get("text"), chat)
    if isinstance(body.get("cache"), bool):
        chat["cache"] = body["cache"]             # the gateway's own opt-in (never sent upstream)
    if body.get("stream") is True:
        chat["stream"] = True
        chat["stream_options"] = {"include_usage": True}
    return chat


def _item(item: Any, at: str, out: list[dict[str, Any]]) -> None:
    if not isinstance(item, dict):
        raise _bad(at, "expected an input item object.", "invalid_type")
    kind = item.get("type")
    if kind == "function_call":
        if not all(isinstance(item.get(k), str) for k in ("call_id", "name", "arguments")):
            raise _bad(at, "a function_call item needs call_id, name and arguments.")
        call = {"id": item["call_id"], "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]}}
        last = out[-1] if out else None
        if last is not None and last["role"] == "assistant":
            last.setdefault("tool_calls", []).append(call)
        else:
            out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        return
    if kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise _bad(f"{at}.call_id", "expected a string.", "missing_required_parameter")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        out.append({"role": "tool", "tool_call_id": item["call_id"], "content": output if isinstance(output, str)
                    else ""})
        return
    if kind == "reasoning":
        return
    if kind not in (None, "message"):
        raise _bad(f"{at}.type", f"input item type {kind!r} is not supported for this model.")
    role = item.get("role")
    if role not in ROLES:
        raise _bad(f"{at}.role", "expected one of assistant, developer, system, user.")
    content = item.get("content")
    if isinstance(content, str):
        out.append({"role": role, "content": content})
        return
    if not isinstance(content, list):
        raise _bad(f"{at}.content", "expected a string or an array of content parts.", "invalid_type")
    parts = [_part(p, f"{at}.content[{j}]") for j, p in enumerate(content)]
    if role == "assistant":
        out.append({"role": role, "content": "".join(p.get("text", "") for p in parts)})
    else:
        out.append({"role": role, "content": parts})


def _part(p: Any, at: str) -> dict[str, Any]:
    kind = p.get("type") if isinstance(p, dict) else None
    if kind in ("input_text", "output_text") and isinstance(p.get("text"), str):
        return {"type": "text", "text": p["text"]}
    if kind == "refusal":
        return {"type": "text", "text": str(p.get("refusal") or "")}
    if kind == "input_image" and isinstance(p.get("image_url"), str):
        image: dict[str, Any] = {"url": p["image_url"]}
        if p.get("detail") in ("low", "high", "auto"):
            image["detail"] = p["detail"]
        return {"type": "image_url", "image_url": image}
    if kind == "input_file" and isinstance(p.get("file_data"), str):
        return {"type": "file", "file": {"filename": p.get("filename") or "file", "file_data": p["file_data"]}}
    raise _bad(at, f"content part type {kind!r} is not supported for this model (file ids need the provider's "
                   "own Responses API).")


def _tools(body: dict[str, Any], chat: dict[str, Any]) -> None:
    tools = body.get("tools")
    if tools is not None:
        if not isinstance(tools, list):
            raise _bad("tools", "expected an array.", "invalid_type")
        out = []
        for i, t in enumerate(tools):
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise _bad(f"tools[{i}]", "only function tools are supported for this model.")
            fn: dict[str, Any] = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object",
                                                                                          "properties": {}}}
            if isinstance(t.get("description"), str):
                fn["description"] = t["description"]
            if isinstance(t.get("strict"), bool):
                fn["strict"] = t["strict"]
            out.append({"type": "function", "function": fn})
        if out:
            chat["tools"] = out
    tc = body.get("tool_choice")
    if tc is None or not chat.get("tools"):
        return
    if tc in ("auto", "none", "required"):
        chat["tool_choice"] = tc
    elif isinstance(tc, dict) and tc.get("type") == "function" and isinstance(tc.get("name"), str):
        chat["tool_choice"] = {"type": "function", "function": {"name": tc["name"]}}
    else:
        raise _bad("tool_choice", "expected 'auto', 'none', 'required' or a function.")


def _format(text: Any, chat: dict[str, Any]) -> None:
    fmt = text.get("format") if isinstance(text, dict) else None
    if not isinstance(fmt, dict) or fmt.get("type") in (None, "text"):
        return
    if fmt.get("type") == "json_object":
        chat["response_format"] = {"type": "json_object"}
    elif fmt.get("type") == "json_schema":
        if not isinstance(fmt.get("name"), str) or not isinstance(fmt.get("schema"), dict):
            raise _bad("text.format", "a json_schema format needs a name and a schema.")
        js = {k: fmt[k] for k in ("name", "schema", "strict", "description") if fmt.get(k) is not None}
        chat["response_format"] = {"type": "json_schema", "json_schema": js}
    else:
        raise _bad("text.format.type", "expected text, json_object or json_schema.")


def validate_responses(call: ChatCall, history: list[dict[str, Any]]) -> None:
    """The client's body stays in `call.raw_body`; `call.body` becomes its chat form."""
    body = call.body
    check_responses(body)
    call.body = to_chat(body, history)
    call.model, call.stream = body["model"], body.get("stream") is True
