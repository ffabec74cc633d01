"""Token counts when the provider reported none, and the worst-case prompt bound for reservations.

Counting uses `bpe-openai` (tiktoken-compatible, tables embedded: works offline) for OpenAI models:
o200k_base for gpt-4o / gpt-4.1 / gpt-5 / o-series, cl100k_base for older ones. Any other model, or no
tokenizer installed, falls back to a documented heuristic: ceil(characters / 4). Loading a table takes
~0.5 s, so counting runs in a worker thread (`count_async`), never on the event loop.
"""

from __future__ import annotations

import asyncio
import re
import threading
from typing import Any

import orjson

_O200K = re.compile(r"^(gpt-4o|gpt-4\.1|gpt-4\.5|gpt-5|o\d|chatgpt-4o|gpt-oss)")
_CL100K = re.compile(r"^(gpt-4|gpt-3\.5|text-embedding-3|text-embedding-ada)")
MESSAGE_OVERHEAD = 4          # tokens OpenAI adds per chat message (role, separators)
REPLY_PRIMING = 3


def encoding_for(model: str) -> str | None:
    bare = model.rsplit("/", 1)[-1]
    if _O200K.match(bare):
        return "o200k_base"
    if _CL100K.match(bare):
        return "cl100k_base"
    return None


class Tokenizer:
    """Thread-safe lazy encodings. `heuristic=True` never loads a table."""

    def __init__(self, heuristic: bool = False) -> None:
        self.heuristic = heuristic
        self._enc: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _encoding(self, name: str) -> Any:
        enc = self._enc.get(name)
        if enc is None and not self.heuristic:
            with self._lock:
                enc = self._enc.get(name)
                if enc is None:
                    try:
                        import bpe_openai
                        enc = bpe_openai.get_encoding(name)
                    except Exception:        # not installed or broken: the heuristic still works
                        enc = False
                    self._enc[name] = enc
        return enc or None

    def count(self, model: str, text: str) -> int:
        if not text:
            return 0
        name = encoding_for(model)
        enc = self._encoding(name) if name else None
        if enc is not None:
            try:
                return len(enc.encode(text, disallowed_special=()))
            except ValueError:               # bpe-openai refuses very long inputs: the heuristic still counts
                pass
        return (len(text) + 3) // 4

    def count_prompt(self, model: str, body: dict[str, Any], endpoint: str) -> int:
        if endpoint in ("embeddings", "completions"):     # legacy completions: `prompt`, the same shapes
            inp = body.get("input" if endpoint == "embeddings" else "prompt")
            items = inp if isinstance(inp, list) else [inp]
            n = 0
            for x in items:
                if isinstance(x, str):
                    n += self.count(model, x)
                elif isinstance(x, list):
                    n += len(x)
                elif isinstance(x, int):
                    n += 1
            return n
        raw = body.get("messages")
        messages = raw if isinstance(raw, list) else []
        return self.count(model, prompt_text(body)) + MESSAGE_OVERHEAD * len(messages) + REPLY_PRIMING

    async def count_async(self, model: str, text: str) -> int:
        return await asyncio.to_thread(self.count, model, text)


def prompt_text(body: dict[str, Any]) -> str:
    """Every text a chat request sends: message contents, text parts, tool calls and tool definitions."""
    parts: list[str] = []
    for m in body.get("messages") or []:
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            parts.append(c)
        elif isinstance(c, list):
            for p in c:
                if isinstance(p, dict) and isinstance(p.get("text"), str):
                    parts.append(p["text"])
        if m.get("tool_calls"):
            parts.append(orjson.dumps(m["tool_calls"]).decode())
    if body.get("tools"):
        parts.append(orjson.dumps(body["tools"]).decode())
    return "\n".join(parts)


def prompt_upper_bound(body: dict[str, Any], endpoint: str) -> int:
    """A bound no byte-level BPE count can exceed: one token per UTF-8 byte of every part sent (images
    and other non-text parts counted by their JSON size), plus per-message overhead. Cheap: no tokenizer."""
    if endpoint in ("embeddings", "completions"):
        inp = body.get("input" if endpoint == "embeddings" else "prompt")
        items = inp if isinstance(inp, list) else [inp]
        return sum(len(x.encode()) if isinstance(x, str) else len(x) if isinstance(x, list) else 1
                   for x in items)
    n = REPLY_PRIMING
    for m in body.get("messages") or []:
        n += MESSAGE_OVERHEAD
        if not isinstance(m, dict):
            continue
        c = m.get("content")
        if isinstance(c, str):
            n += len(c.encode())
        elif c is not None:
            n += len(orjson.dumps(c))
        if m.get("tool_calls"):
            n += len(orjson.dumps(m["tool_calls"]))
    if body.get("tools"):
        n += len(orjson.dumps(body["tools"]))
    return n


def streamed_text(chunks: list[bytes]) -> str:
    """The text deltas of the OpenAI SSE bytes relayed so far (for estimating a cut stream's completion).
    Each event is parsed as JSON, so any spacing the upstream used counts (a regex once missed
    `"content": "..."` with a space and recorded 0 tokens). Runs only when the usage never came. Legacy
    completions' `choices[].text` and a passed-through Anthropic stream's deltas count too."""
    out: list[str] = []
    for line in b"".join(chunks).splitlines():
        if not line.startswith(b"data:"):
            continue
        try:
            event = orjson.loads(line[5:])
        except orjson.JSONDecodeError:
            continue                          # [DONE], or the event the cut split
        if not isinstance(event, dict):
            continue
        top = event.get("delta")
        if isinstance(top, dict):                 # Anthropic: text_delta, thinking_delta, input_json_delta
            for name in ("text", "thinking", "partial_json"):
                if isinstance(v := top.get(name), str):
                    out.append(v)
        for ch in event.get("choices") or ():
            if isinstance(ch, dict) and isinstance(ch.get("text"), str):
                out.append(ch["text"])            # a legacy completion's chunk
            delta = ch.get("delta") if isinstance(ch, dict) else None
            if not isinstance(delta, dict):
                continue
            for name in ("content", "reasoning_content", "reasoning"):
                if isinstance(v := delta.get(name), str):
                    out.append(v)
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") if isinstance(tc, dict) else None
                if isinstance(fn, dict) and isinstance(fn.get("arguments"), str):
                    out.append(fn["arguments"])
    return "".join(out)


def reply_text(body: bytes | None) -> str:
    """The answer text of a non-streamed chat completion body."""
    if not body:
        return ""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return ""
    out: list[str] = []
    for ch in data.get("choices") or [] if isinstance(data, dict) else []:
        msg = ch.get("message") if isinstance(ch, dict) else None
        if isinstance(msg, dict):
            if isinstance(msg.get("content"), str):
                out.append(msg["content"])
            if msg.get("tool_calls"):
                out.append(orjson.dumps(msg["tool_calls"]).decode())
    return "".join(out)
