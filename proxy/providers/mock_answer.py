"""What the mock provider answers, decided from the request alone (no clock, no randomness): text, tool
calls that validate against the tool's schema, structured output for `response_format`, `n` choices,
embeddings in float or base64 form. The wire rendering (JSON or SSE) is proxy/providers/mock.py's job."""

from __future__ import annotations

import base64
import hashlib
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any

import orjson

from proxy.context import Usage
from proxy.providers.mock_schema import WORDS, example

MAX_CHOICES = 16
MAX_DIMENSIONS = 8192


@dataclass(slots=True)
class MockChoice:
    pieces: list[str]                   # the content as streamed (joined: the message content)
    finish: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)   # OpenAI `tool_calls` objects


class MockRefusal(Exception):
    """The request is one OpenAI would refuse with a 400 (e.g. tool_choice naming no listed tool)."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": str(self), "type": "invalid_request_error",
                                       "param": self.param, "code": None}})


def prompt_text(messages: Any) -> str:
    parts: list[str] = []
    for m in messages if isinstance(messages, list) else []:
        c = m.get("content") if isinstance(m, dict) else None
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            parts.extend(p.get("text", "") for p in c if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "\n".join(parts)


def count_tokens(text: str) -> int:
    """A stable stand-in for a tokenizer: about four characters a token, at least one per word."""
    return max(len(text.split()), (len(text) + 3) // 4)


def answer(body: dict[str, Any], reply_tokens: int) -> tuple[list[MockChoice], Usage]:
    """The choices for a chat request and their usage. Raises MockRefusal for a request OpenAI refuses."""
    messages = body.get("messages")
    prompt = prompt_text(messages)
    n = body.get("n")
    n = min(n, MAX_CHOICES) if isinstance(n, int) and not isinstance(n, bool) and n > 0 else 1
    calls = _tools_to_call(body)
    schema = _response_schema(body.get("response_format"))
    choices: list[MockChoice] = []
    completion = 0
    for i in range(n):
        seed = prompt if i == 0 else f"{prompt}\x00choice {i}"
        if calls:
            tool_calls = [_tool_call(name, params, f"{seed}\x00{name}\x00{k}") for k, (name, params) in
                          enumerate(calls)]
            completion += sum(count_tokens(t["function"]["arguments"]) for t in tool_calls)
            choices.append(MockChoice([], "tool_calls", tool_calls))
        elif schema is not None:
            text = orjson.dumps(example(schema, seed)).decode()
            completion += count_tokens(text)
            choices.append(MockChoice([text[j:j + 16] for j in range(0, len(text), 16)], "stop"))
        else:
            words, finish = _words(body, seed, reply_tokens)
            completion += len(words)
            choices.append(MockChoice(words, finish))
    prompt_tokens = count_tokens(prompt) + 3 * len(messages if isinstance(messages, list) else [])
    return choices, Usage(prompt_tokens=prompt_tokens, completion_tokens=completion,
                          total_tokens=prompt_tokens + completion)


def _words(body: dict[str, Any], seed: str, reply_tokens: int) -> tuple[list[str], str]:
    limit = body.get("max_completion_tokens") or body.get("max_tokens")
    n = reply_tokens if not isinstance(limit, int) else min(reply_tokens, max(limit, 0))
    digest = hashlib.sha256(seed.encode()).digest()
    words = [("" if i == 0 else " ") + WORDS[digest[i % 32] % len(WORDS)] for i in range(n)]
    return words, "length" if n < reply_tokens else "stop"


def _tools_to_call(body: dict[str, Any]) -> list[tuple[str, Any]]:
    """(name, parameters schema) of each tool to call: the forced one; with `required`, or `auto` when the
    conversation's last message is the user's, the tools it names (with `required`, else the first)."""
    tools: dict[str, Any] = {}
    for t in body.get("tools") or []:
        fn = t.get("function") if isinstance(t, dict) else None
        if isinstance(fn, dict) and isinstance(fn.get("name"), str):
            tools[fn["name"]] = fn.get("parameters") or {"type": "object", "properties": {}}
    choice = body.get("tool_choice")
    if not tools or choice == "none":
        return []
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if isinstance(choice.get("function"), dict) else None
        if name not in tools:
            raise MockRefusal(f"Invalid value for 'tool_choice': no function named {name!r} in 'tools'.",
                              "tool_choice")
        return [(name, tools[name])]
    messages = body.get("messages") if isinstance(body.get("messages"), list) else []
    last = messages[-1] if messages and isinstance(messages[-1], dict) else {}
    named: list[str] = []
    if last.get("role") == "user":
        text = prompt_text([last])
        named = [n for n in tools if re.search(rf"(?<![\w-]){re.escape(n)}(?![\w-])", text)]
    if choice == "required" and not named:
        named = [next(iter(tools))]
    if body.get("parallel_tool_calls") is False:
        named = named[:1]
    return [(n, tools[n]) for n in named]


def _tool_call(name: str, params: Any, seed: str) -> dict[str, Any]:
    args = orjson.dumps(example(params, seed)).decode()
    call_id = "call_" + hashlib.sha256(seed.encode()).hexdigest()[:24]
    return {"id": call_id, "type": "function", "function": {"name": name, "arguments": args}}


def _response_schema(fmt: Any) -> dict[str, Any] | None:
    """The schema the content must follow: json_schema's own, or any object for json_object."""
    if not isinstance(fmt, dict):
        return None
    if fmt.get("type") == "json_object":
        return {"type": "object", "properties": {"answer": {"type": "string"}}, "required": ["answer"]}
    if fmt.get("type") == "json_schema":
        js = fmt.get("json_schema")
        schema = js.get("schema") if isinstance(js, dict) else None
        return schema if isinstance(schema, dict) else {"type": "object"}
    return None


def embeddings(body: dict[str, Any], default_dims: int) -> bytes:
    """A unit vector per input, derived from its text (equal inputs, equal vectors), `dimensions` long,
    as floats or, with `encoding_format: base64`, as OpenAI's little-endian float32 bytes."""
    inputs = body["input"] if isinstance(body.get("input"), list) else [body.get("input")]
    dims = body.get("dimensions")
    dims = dims if isinstance(dims, int) and not isinstance(dims, bool) else default_dims
    if not 0 < dims <= MAX_DIMENSIONS:
        raise MockRefusal(f"Invalid value for 'dimensions': must be between 1 and {MAX_DIMENSIONS}.", "dimensions")
    as_b64 = body.get("encoding_format") == "base64"
    data, tokens = [], 0
    for i, item in enumerate(inputs):
        text = item if isinstance(item, str) else orjson.dumps(item).decode()
        tokens += count_tokens(text)
        raw = [(b - 127.5) / 127.5 for b in hashlib.shake_256(text.encode()).digest(dims)]
        norm = math.sqrt(sum(v * v for v in raw)) or 1.0
        vec = [v / norm for v in raw]
        value: Any = base64.b64encode(struct.pack(f"<{dims}f", *vec)).decode() if as_b64 else vec
        data.append({"object": "embedding", "index": i, "embedding": value})
    return orjson.dumps({"object": "list", "data": data, "model": body.get("model", "mock"),
                         "usage": {"prompt_tokens": tokens, "total_tokens": tokens}})
