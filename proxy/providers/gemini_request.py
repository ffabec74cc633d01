"""OpenAI chat request -> Gemini `generateContent` JSON (REST, camelCase field names).

Field names follow the google-genai SDK types (Content, Part, GenerationConfig, Tool, ToolConfig) with the
REST API's camelCase aliases. Everything the client sent that Gemini has no equivalent for is reported in
`dropped` (or rejected, per the provider's `unsupported_params`).
"""

from __future__ import annotations

import mimetypes
import re
from typing import Any
from urllib.parse import urlsplit

import orjson

from proxy.errors import InvalidRequest

# OpenAI params this module maps, and ones that carry no generation meaning (silently ignored).
HANDLED = frozenset({"model", "messages", "stream", "stream_options", "temperature", "top_p", "top_k", "max_tokens",
                     "max_completion_tokens", "stop", "n", "seed", "presence_penalty", "frequency_penalty",
                     "response_format", "tools", "tool_choice"})
IGNORED = frozenset({"user", "metadata", "store", "options", "cache"})

# Documented escape hatch for function calls replayed without the signature Gemini 3 requires
# (https://ai.google.dev/gemini-api/docs/thought-signatures).
SKIP_SIGNATURE = "skip_thought_signature_validator"

# JSON-Schema keys the OpenAPI-subset `Schema` type (responseSchema / parameters) accepts.
_OPENAPI_KEYS = frozenset({"type", "format", "description", "nullable", "enum", "items", "properties", "required",
                           "minItems", "maxItems", "minimum", "maximum", "anyOf", "propertyOrdering", "title",
                           "minLength", "maxLength", "pattern", "minProperties", "maxProperties", "default",
                           "example"})

_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w-]+=[^;,]*)*);base64,(.*)$", re.S)


def unsupported_params(body: dict[str, Any]) -> list[str]:
    """Client params with a value that Gemini cannot honour."""
    out: list[str] = []
    for k, v in body.items():
        if k in HANDLED or k in IGNORED or v is None or v is False:
            continue
        if k == "parallel_tool_calls" and v is True:
            continue                # Gemini may always call functions in parallel: the default is honoured
        out.append(k)
    return out


def build_generate_body(body: dict[str, Any], *, schema_format: str, safety_settings: list[dict[str, str]],
                        signature_fallback: bool) -> dict[str, Any]:
    system, contents = messages_to_contents(body.get("messages") or [], signature_fallback)
    wire: dict[str, Any] = {"contents": contents}
    if system:
        wire["systemInstruction"] = {"parts": system}
    tools = _tools(body.get("tools"), schema_format)
    if tools:
        wire["tools"] = tools
        tc = _tool_config(body.get("tool_choice"))
        if tc:
            wire["toolConfig"] = tc
    if safety_settings:
        wire["safetySettings"] = safety_settings
    gc = generation_config(body, schema_format)
    if gc:
        wire["generationConfig"] = gc
    return wire


def generation_config(body: dict[str, Any], schema_format: str) -> dict[str, Any]:
    gc: dict[str, Any] = {}
    for src, dst in (("temperature", "temperature"), ("top_p", "topP"), ("top_k", "topK"), ("seed", "seed"),
                     ("presence_penalty", "presencePenalty"), ("frequency_penalty", "frequencyPenalty"),
                     ("n", "candidateCount")):
        if body.get(src) is not None:
            gc[dst] = body[src]
    limit = body.get("max_completion_tokens")
    if limit is None:
        limit = body.get("max_tokens")
    if limit is not None:
        gc["maxOutputTokens"] = limit
    stop = body.get("stop")
    if isinstance(stop, str):
        gc["stopSequences"] = [stop]
    elif isinstance(stop, list) and stop:
        gc["stopSequences"] = stop
    rf = body.get("response_format")
    if isinstance(rf, dict):
        kind = rf.get("type")
        if kind == "json_object":
            gc["responseMimeType"] = "application/json"
        elif kind == "json_schema":
            gc["responseMimeType"] = "application/json"
            schema = (rf.get("json_schema") or {}).get("schema")
            if isinstance(schema, dict):
                if schema_format == "openapi":
                    gc["responseSchema"] = openapi_schema(schema)
                else:
                    gc["responseJsonSchema"] = schema
        elif kind not in (None, "text"):
            raise InvalidRequest(f"Invalid 'response_format.type': {kind!r} is not supported.",
                                 param="response_format", code="invalid_value")
    return gc


def openapi_schema(schema: Any) -> Any:
    """JSON Schema -> the OpenAPI subset of Gemini's `Schema`: unknown keys dropped, `["x", "null"]` types
    become `nullable`. Only for `schema_format: openapi` (older models without JSON Schema support)."""
    if isinstance(schema, list):
        return [openapi_schema(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out: dict[str, Any] = {}
    for k, v in schema.items():
        if k not in _OPENAPI_KEYS:
            continue
        if k == "type" and isinstance(v, list):
            kinds = [t for t in v if t != "null"]
            if len(kinds) < len(v):
                out["nullable"] = True
            v = kinds[0] if kinds else "string"
        if k == "properties" and isinstance(v, dict):
            v = {name: openapi_schema(s) for name, s in v.items()}
        elif k in ("items", "anyOf"):
            v = openapi_schema(v)
        out[k] = v
    return out


def _tools(tools: Any, schema_format: str) -> list[dict[str, Any]]:
    if not isinstance(tools, list) or not tools:
        return []
    decls: list[dict[str, Any]] = []
    for i, t in enumerate(tools):
        fn = t.get("function") if isinstance(t, dict) and t.get("type") == "function" else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"Invalid 'tools[{i}]': only function tools are supported by this model.",
                                 param=f"tools[{i}]", code="invalid_value")
        d: dict[str, Any] = {"name": fn["name"]}
        if fn.get("description"):
            d["description"] = fn["description"]
        params = fn.get("parameters")
        if isinstance(params, dict) and params:
            if schema_format == "openapi":
                d["parameters"] = openapi_schema(params)
            else:
                d["parametersJsonSchema"] = params
        decls.append(d)
    return [{"functionDeclarations": decls}]


def _tool_config(choice: Any) -> dict[str, Any] | None:
    if choice is None:
        return None
    modes = {"auto": "AUTO", "none": "NONE", "required": "ANY"}
    if isinstance(choice, str) and choice in modes:
        return {"functionCallingConfig": {"mode": modes[choice]}}
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        if isinstance(name, str) and name:
            return {"functionCallingConfig": {"mode": "ANY", "allowedFunctionNames": [name]}}
    raise InvalidRequest("Invalid 'tool_choice': expected 'auto', 'none', 'required' or a named function.",
                         param="tool_choice", code="invalid_value")


def messages_to_contents(messages: list[Any], signature_fallback: bool
                         ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(systemInstruction parts, contents). Consecutive turns of one role merge into one Content, so
    parallel tool results travel together as Gemini expects."""
    system: list[dict[str, Any]] = []
    contents: list[dict[str, Any]] = []
    call_names: dict[str, str] = {}
    for i, m in enumerate(messages):
        role = m.get("role")
        if role in ("system", "developer"):
            system.extend({"text": t} for t in _texts(m.get("content"), i))
            continue
        if role == "user":
            wire_role, parts = "user", _user_parts(m.get("content"), i)
        elif role == "assistant":
            wire_role, parts = "model", _assistant_parts(m, i, call_names, signature_fallback)
        elif role in ("tool", "function"):
            wire_role, parts = "user", [_function_response(m, i, call_names)]
        else:
            raise InvalidRequest(f"Invalid 'messages[{i}].role'.", param=f"messages[{i}].role", code="invalid_value")
        if not parts:
            continue
        if contents and contents[-1]["role"] == wire_role:
            contents[-1]["parts"].extend(parts)
        else:
            contents.append({"role": wire_role, "parts": parts})
    return system, contents


def _texts(content: Any, i: int) -> list[str]:
    if content is None:
        return []
    if isinstance(content, str):
        return [content] if content else []
    out: list[str] = []
    for j, p in enumerate(content):
        if not isinstance(p, dict) or p.get("type") != "text" or not isinstance(p.get("text"), str):
            raise InvalidRequest(f"Invalid 'messages[{i}].content[{j}]': expected a text part.",
                                 param=f"messages[{i}].content[{j}]", code="invalid_value")
        out.append(p["text"])
    return out


def _user_parts(content: Any, i: int) -> list[dict[str, Any]]:
    if content is None or isinstance(content, str):
        return [{"text": content}] if content else []
    parts: list[dict[str, Any]] = []
    for j, p in enumerate(content):
        where = f"messages[{i}].content[{j}]"
        kind = p.get("type") if isinstance(p, dict) else None
        if kind == "text" and isinstance(p.get("text"), str):
            if p["text"]:
                parts.append({"text": p["text"]})
        elif kind == "image_url":
            iu = p.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            parts.append(_media_part(url, where, default_mime="image/jpeg"))
        elif kind == "input_audio" and isinstance(p.get("input_audio"), dict):
            a = p["input_audio"]
            fmt = a.get("format") if isinstance(a.get("format"), str) else "wav"
            parts.append({"inlineData": {"mimeType": f"audio/{fmt}", "data": a.get("data") or ""}})
        elif kind == "file" and isinstance(p.get("file"), dict) and isinstance(p["file"].get("file_data"), str):
            parts.append(_media_part(p["file"]["file_data"], where, default_mime="application/pdf"))
        else:
            raise InvalidRequest(f"Invalid '{where}': unsupported content part for this model.",
                                 param=where, code="invalid_value")
    return parts


def _media_part(url: Any, where: str, default_mime: str) -> dict[str, Any]:
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"Invalid '{where}': expected a URL.", param=where, code="invalid_value")
    if url.startswith("data:"):
        m = _DATA_URL.match(url)
        if m is None:
            raise InvalidRequest(f"Invalid '{where}': expected a base64 data URL.", param=where,
                                 code="invalid_value")
        return {"inlineData": {"mimeType": m.group(1) or default_mime, "data": m.group(3)}}
    scheme = urlsplit(url).scheme
    if scheme not in ("http", "https", "gs"):
        raise InvalidRequest(f"Invalid '{where}': expected an https or data: URL.", param=where,
                             code="invalid_value")
    mime = mimetypes.guess_type(urlsplit(url).path)[0] or default_mime
    return {"fileData": {"fileUri": url, "mimeType": mime}}


def _assistant_parts(m: dict[str, Any], i: int, call_names: dict[str, str],
                     signature_fallback: bool) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = [{"text": t} for t in _assistant_texts(m.get("content"), i)]
    calls = m.get("tool_calls") or []
    if isinstance(m.get("function_call"), dict):                # the deprecated single-call form
        calls = [*calls, {"id": "", "type": "function", "function": m["function_call"]}]
    for j, tc in enumerate(calls):
        fn = tc.get("function") if isinstance(tc, dict) else None
        if not isinstance(fn, dict) or not isinstance(fn.get("name"), str):
            raise InvalidRequest(f"Invalid 'messages[{i}].tool_calls[{j}]'.", param=f"messages[{i}].tool_calls[{j}]",
                                 code="invalid_value")
        if isinstance(tc.get("id"), str) and tc["id"]:
            call_names[tc["id"]] = fn["name"]
        part: dict[str, Any] = {"functionCall": {"name": fn["name"], "args": _args(fn.get("arguments"), i, j)}}
        sig = ((tc.get("extra_content") or {}).get("google") or {}).get("thought_signature")
        if isinstance(sig, str) and sig:
            part["thoughtSignature"] = sig
        elif signature_fallback and j == 0:
            part["thoughtSignature"] = SKIP_SIGNATURE
        parts.append(part)
    return parts


def _assistant_texts(content: Any, i: int) -> list[str]:
    if isinstance(content, list):                # assistant parts may also be refusals: keep only text
        return [p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str) and p["text"]]
    return _texts(content, i)


def _args(raw: Any, i: int, j: int) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if raw in (None, ""):
        return {}
    try:
        val = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        raise InvalidRequest(f"Invalid 'messages[{i}].tool_calls[{j}].function.arguments': not valid JSON.",
                             param=f"messages[{i}].tool_calls[{j}].function.arguments",
                             code="invalid_value") from None
    return val if isinstance(val, dict) else {"value": val}


def _function_response(m: dict[str, Any], i: int, call_names: dict[str, str]) -> dict[str, Any]:
    """A tool result. Gemini wants the function's name (looked up from the call id) and an object."""
    name = call_names.get(m.get("tool_call_id") or "") or m.get("name")
    if not isinstance(name, str) or not name:
        raise InvalidRequest(f"Invalid 'messages[{i}].tool_call_id': no earlier assistant tool call has this id.",
                             param=f"messages[{i}].tool_call_id", code="invalid_value")
    content = m.get("content")
    text = "".join(_texts(content, i)) if isinstance(content, list) else content
    if isinstance(text, str):
        try:
            value: Any = orjson.loads(text)
        except orjson.JSONDecodeError:
            value = text
    else:
        value = text
    response = value if isinstance(value, dict) else {"result": value}
    return {"functionResponse": {"name": name, "response": response}}
