"""Ollama's native API (`/api/chat`, `/api/embed`, `/api/tags`): NDJSON streams, `options`, object tool arguments.

Use this rather than Ollama's OpenAI-compatible `/v1` (a plain `type: openai` entry) for what only the native
API offers: per-request `options` such as `num_ctx`, `keep_alive`, `format` with a JSON schema, `think`.
Request extensions a client may send: `ollama_options` (merged into `options`, wins over everything),
`keep_alive` and `think` (passed through).
"""

from __future__ import annotations

import base64
import struct
import uuid
from typing import Any

import msgspec
import orjson

from proxy.config import ProviderConfig, Target
from proxy.context import ChatCall, Usage
from proxy.errors import InvalidRequest, UpstreamError, upstream_error_for_status
from proxy.providers.base import WireRequest, retry_after_seconds
from proxy.providers.openai import upstream_body
from proxy.streaming.chunks import DONE, ChunkWriter, completion_body, new_id, wants_usage


class OllamaSettings(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    options: dict[str, Any] = {}                 # default Ollama options (num_ctx, top_k, ...), under the request's
    keep_alive: str | int | float | None = None  # e.g. "10m", 0, -1; a request's own keep_alive wins


# OpenAI parameter -> Ollama option.
OPTION_PARAMS = {"temperature": "temperature", "top_p": "top_p", "seed": "seed",
                 "presence_penalty": "presence_penalty", "frequency_penalty": "frequency_penalty",
                 "max_completion_tokens": "num_predict", "max_tokens": "num_predict"}
# Consumed by the mapping below (or only meaningful to the proxy).
HANDLED = frozenset({"model", "messages", "stream", "stream_options", "tools", "response_format", "stop",
                     "keep_alive", "think", "ollama_options", "user"})
# Accepted without a word when they ask for what Ollama does anyway.
HARMLESS = {"n": 1, "tool_choice": "auto", "parallel_tool_calls": True, "logprobs": False}
EMBED_HANDLED = frozenset({"model", "input", "dimensions", "encoding_format", "keep_alive", "truncate",
                           "ollama_options", "user"})


class OllamaProvider:
    Settings = OllamaSettings
    transport = "http"

    def __init__(self, config: ProviderConfig) -> None:
        self.config = config
        self.settings: OllamaSettings = config.settings
        self.base = (config.base_url or "http://127.0.0.1:11434").rstrip("/")
        self.headers = {"Content-Type": "application/json", **config.headers}
        if config.api_key:      # plain Ollama has no auth; a reverse proxy or ollama.com in front may
            self.headers["Authorization"] = f"Bearer {config.api_key}"

    # -- requests --

    def to_wire(self, call: ChatCall, target: Target) -> WireRequest:
        body = upstream_body(call, target.model)
        if call.endpoint == "embeddings":
            wire, dropped = self._embed_body(body), _unknown(body, EMBED_HANDLED, chat=False)
            path = "/api/embed"
        else:
            wire, dropped = self._chat_body(body, call.stream), _unknown(body, HANDLED)
            path = "/api/chat"
        if dropped and self.config.unsupported_params == "reject":
            raise InvalidRequest(f"Unsupported parameter '{dropped[0]}': provider '{self.config.name}' (Ollama) "
                                 "does not accept it.", param=dropped[0], code="unsupported_parameter")
        return WireRequest(url=self.base + path, headers=self.headers, body=orjson.dumps(wire), dropped=dropped)

    def _options(self, body: dict[str, Any], mapped: dict[str, Any]) -> dict[str, Any]:
        extra = body.get("ollama_options")
        if extra is not None and not isinstance(extra, dict):
            raise InvalidRequest("Invalid 'ollama_options': expected an object.", param="ollama_options",
                                 code="invalid_type")
        return {**self.settings.options, **mapped, **(extra or {})}

    def _keep_alive(self, body: dict[str, Any], out: dict[str, Any]) -> None:
        ka = body.get("keep_alive")
        ka = self.settings.keep_alive if ka is None else ka
        if ka is not None:
            out["keep_alive"] = ka

    def _chat_body(self, body: dict[str, Any], stream: bool) -> dict[str, Any]:
        mapped = {OPTION_PARAMS[k]: v for k, v in body.items() if k in OPTION_PARAMS and v is not None}
        stop = body.get("stop")
        if stop is not None:
            mapped["stop"] = [stop] if isinstance(stop, str) else stop
        out: dict[str, Any] = {"model": body["model"], "messages": ollama_messages(body.get("messages") or []),
                               "stream": stream}
        if body.get("tools"):
            out["tools"] = body["tools"]          # same {"type": "function", "function": {...}} shape
        fmt = response_format(body.get("response_format"))
        if fmt is not None:
            out["format"] = fmt
        options = self._options(body, mapped)
        if options:
            out["options"] = options
        self._keep_alive(body, out)
        if body.get("think") is not None:
            out["think"] = body["think"]
        return out

    def _embed_body(self, body: dict[str, Any]) -> dict[str, Any]:
        inp = body.get("input")
        if isinstance(inp, list) and any(not isinstance(x, str) for x in inp):
            raise InvalidRequest("Ollama embeds text only: 'input' must be a string or an array of strings.",
                                 param="input", code="invalid_value")
        out: dict[str, Any] = {"model": body["model"], "input": inp}
        for k in ("dimensions", "truncate"):
            if body.get(k) is not None:
                out[k] = body[k]
        options = self._options(body, {})
        if options:
            out["options"] = options
        self._keep_alive(body, out)
        return out

    # -- responses --

    def from_wire(self, status: int, body: bytes, call: ChatCall, target: Target) -> tuple[bytes, Usage]:
        data = self._json(body)
        usage = usage_of(data)
        if call.endpoint == "embeddings":
            return embeddings_body(data, target.model, call.body.get("encoding_format") == "base64"), usage
        msg = data.get("message") or {}
        tool_calls = [openai_tool_call(tc) for tc in msg.get("tool_calls") or []]
        message: dict[str, Any] = {"role": "assistant", "content": msg.get("content") or (None if tool_calls else "")}
        if tool_calls:
            message["tool_calls"] = tool_calls
        if msg.get("thinking"):
            message["reasoning_content"] = msg["thinking"]
        out = completion_body(id=new_id(), model=data.get("model") or target.model, message=message,
                              finish_reason=finish_reason(data.get("done_reason"), bool(tool_calls)), usage=usage)
        return out, usage

    def _json(self, body: bytes) -> dict[str, Any]:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise UpstreamError(f"provider '{self.config.name}' sent a body that is not JSON") from None
        if not isinstance(data, dict):
            raise UpstreamError(f"provider '{self.config.name}' sent an unexpected body")
        if isinstance(data.get("error"), str):
            raise UpstreamError(data["error"])
        return data

    def error_from_wire(self, status: int, body: bytes, headers: Any) -> UpstreamError:
        """Ollama errors are `{"error": "text"}` with no code, so the HTTP status decides the class."""
        message = error_text(body) or f"provider '{self.config.name}' answered HTTP {status}"
        code = None
        if status in (400, 500) and "context length" in message.lower():
            return upstream_error_for_status(400, message, code="context_length_exceeded")
        if status == 404:
            code = "model_not_found"
        return upstream_error_for_status(status, message, code=code, retry_after=retry_after_seconds(headers))

    def new_stream(self, call: ChatCall, target: Target) -> OllamaStream:
        return OllamaStream(target.model, wants_usage(call.body))

    def health_request(self) -> WireRequest | None:
        return WireRequest(method="GET", url=self.base + "/api/tags", headers=self.headers)


# -- request mapping helpers --

def _unknown(body: dict[str, Any], handled: frozenset[str], chat: bool = True) -> list[str]:
    """Request fields this adapter does not translate (a `null` value asks for nothing, so it is not one)."""
    out = []
    for k, v in body.items():
        if k in handled or v is None or (chat and (k in OPTION_PARAMS or HARMLESS.get(k, ...) == v)):
            continue
        out.append(k)
    return out


def response_format(rf: Any) -> Any:
    """OpenAI `response_format` -> Ollama `format`: "json", a JSON schema, or None for plain text."""
    if not isinstance(rf, dict):
        return None
    if rf.get("type") == "json_object":
        return "json"
    if rf.get("type") == "json_schema":
        js = rf.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        return schema if isinstance(schema, dict) else "json"
    return None


def _text_and_images(content: Any, where: str) -> tuple[str, list[str]]:
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    texts: list[str] = []
    images: list[str] = []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            texts.append(part["text"])
        elif kind == "image_url":
            iu = part.get("image_url")
            url = iu.get("url") if isinstance(iu, dict) else iu
            images.append(_image_data(url, f"{where}[{j}].image_url"))
        else:
            raise InvalidRequest(f"Invalid '{where}[{j}]': Ollama accepts text and image_url parts only.",
                                 param=f"{where}[{j}]", code="invalid_value")
    return "\n".join(texts), images


def _image_data(url: Any, where: str) -> str:
    """A data: URL -> its base64 payload. Ollama cannot fetch URLs and the proxy will not fetch for it."""
    if isinstance(url, str) and url.startswith("data:"):
        head, sep, payload = url.partition(",")
        if sep and head.endswith(";base64") and payload:
            return payload
    raise InvalidRequest(f"Invalid '{where}': Ollama needs images inline as base64 data: URLs "
                         "(data:image/png;base64,...); remote image URLs are not supported.",
                         param=where, code="invalid_value")


def _arguments(args: Any, where: str) -> Any:
    if isinstance(args, dict):
        return args
    if args is None or args == "":
        return {}
    try:
        parsed = orjson.loads(args)
    except (orjson.JSONDecodeError, TypeError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest(f"Invalid '{where}': expected a JSON object string.", param=where, code="invalid_value")
    return parsed


def ollama_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """OpenAI messages -> Ollama messages (images as base64 lists, tool-call arguments as objects)."""
    out: list[dict[str, Any]] = []
    names: dict[str, str] = {}       # tool_call_id -> function name, for the tool results' `tool_name`
    for i, m in enumerate(messages):
        role = m.get("role")
        text, images = _text_and_images(m.get("content"), f"messages[{i}].content")
        msg: dict[str, Any] = {"role": "system" if role == "developer" else role, "content": text}
        if images:
            msg["images"] = images
        if role == "assistant" and m.get("tool_calls"):
            calls = []
            for k, tc in enumerate(m["tool_calls"]):
                fn = tc.get("function") or {}
                call: dict[str, Any] = {"function": {"name": fn.get("name"), "arguments": _arguments(
                    fn.get("arguments"), f"messages[{i}].tool_calls[{k}].function.arguments")}}
                if tc.get("id"):
                    call["id"] = tc["id"]
                    names[tc["id"]] = fn.get("name") or ""
                calls.append(call)
            msg["tool_calls"] = calls
        elif role in ("tool", "function"):
            msg["role"] = "tool"
            tcid = m.get("tool_call_id")
            if tcid:
                msg["tool_call_id"] = tcid
            name = m.get("name") or names.get(tcid or "")
            if name:
                msg["tool_name"] = name
        out.append(msg)
    return out


# -- response mapping helpers --

def usage_of(data: dict[str, Any]) -> Usage:
    p, c = int(data.get("prompt_eval_count") or 0), int(data.get("eval_count") or 0)
    return Usage(prompt_tokens=p, completion_tokens=c, total_tokens=p + c)


def finish_reason(done_reason: Any, tool_calls: bool) -> str:
    if done_reason == "length":
        return "length"
    return "tool_calls" if tool_calls else "stop"


def openai_tool_call(tc: dict[str, Any]) -> dict[str, Any]:
    fn = tc.get("function") or {}
    args = fn.get("arguments")
    return {"id": tc.get("id") or "call_" + uuid.uuid4().hex[:24], "type": "function",
            "function": {"name": fn.get("name") or "",
                         "arguments": args if isinstance(args, str) else orjson.dumps(args or {}).decode()}}


def embeddings_body(data: dict[str, Any], model: str, as_base64: bool) -> bytes:
    items = []
    for i, vec in enumerate(data.get("embeddings") or []):
        emb: Any = base64.b64encode(struct.pack(f"<{len(vec)}f", *vec)).decode() if as_base64 else vec
        items.append({"object": "embedding", "index": i, "embedding": emb})
    n = int(data.get("prompt_eval_count") or 0)
    return orjson.dumps({"object": "list", "data": items, "model": data.get("model") or model,
                         "usage": {"prompt_tokens": n, "total_tokens": n}})


def error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        text = body.decode("utf-8", "replace").strip()
        return text[:300] if text and text.isprintable() else ""
    err = data.get("error") if isinstance(data, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return err if isinstance(err, str) else ""


class OllamaStream:
    """NDJSON lines (any byte split) -> OpenAI chunks. Tool calls arrive whole, each becomes one delta."""

    __slots__ = ("_buf", "_started", "_tools", "_w", "done", "usage")

    def __init__(self, model: str, include_usage: bool) -> None:
        self._w = ChunkWriter(model, include_usage)
        self._buf = b""
        self._started = False
        self._tools = 0
        self.done = False
        self.usage: Usage | None = None

    def feed(self, data: bytes) -> bytes:
        if self.done:
            return b""
        buf = self._buf + data if self._buf else data
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf
            return b""
        self._buf = buf[cut + 1:]
        out = []
        for line in buf[:cut].split(b"\n"):
            if line.strip():
                out.append(self._line(line))
                if self.done:
                    break
        return b"".join(out)

    def finish(self) -> bytes:
        rest, self._buf = self._buf, b""
        out = self._line(rest) if not self.done and rest.strip() else b""
        if not self.done:
            raise UpstreamError("the Ollama stream ended before its final `done` message")
        return out

    def _line(self, line: bytes) -> bytes:
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            raise UpstreamError("Ollama sent a stream line that is not JSON") from None
        if not isinstance(obj, dict):
            raise UpstreamError("Ollama sent an unexpected stream line")
        if obj.get("error") is not None:
            raise UpstreamError(str(obj["error"]) or "Ollama reported an error mid-stream")
        w, parts = self._w, []
        msg = obj.get("message") or {}
        if not self._started:       # like OpenAI: a role-only first chunk
            parts.append(w.delta({"role": "assistant", "content": ""}))
            self._started = True
        delta: dict[str, Any] = {}
        if msg.get("thinking"):
            delta["reasoning_content"] = msg["thinking"]
        if msg.get("content"):
            delta["content"] = msg["content"]
        if delta:
            parts.append(w.delta(delta))
        for tc in msg.get("tool_calls") or []:
            call = openai_tool_call(tc)
            call["index"] = self._tools
            self._tools += 1
            parts.append(w.delta({"tool_calls": [call]}))
        if obj.get("done"):
            self.done = True
            self.usage = usage_of(obj)
            parts += [w.delta({}, finish_reason(obj.get("done_reason"), self._tools > 0)), w.usage(self.usage), DONE]
        return b"".join(parts)
