"""Token estimate reserved against tokens-per-minute limits before a call (settled to real usage after).

prompt tokens + the completion budget (`max_completion_tokens` / `max_tokens`, else `limits.default_max_tokens`).
The prompt is estimated without tokenizer tables, so the request path never loads ~140 MB of BPE tables
nor spends ~300 µs counting an 8 KB prompt on the event loop:
- `heuristic` (the default; OpenAI's own rate limiter estimates the same way): one token per 4 characters
  (at least one per word; prompts over `tokenizer_max_chars` skip the word count);
- `bytes`: one token per UTF-8 byte, a bound no byte-level BPE count can exceed (as budgets reserve).
Both add +3 per message, +3 for the reply's priming (OpenAI's chat accounting) and 765 per image part.
The reservation is settled to the provider's reported usage when the call ends, so the estimate only
decides admission; exact counting (bpe-openai) stays off the request path (proxy/cost/tokens.py).
"""

from __future__ import annotations

from typing import Any

PER_MESSAGE = 3
REPLY_PRIMING = 3
IMAGE_TOKENS = 765          # a 1024x1024 image at detail=high (OpenAI's tiling formula); settled after


def heuristic(text: str) -> int:
    return max(len(text.split()), (len(text) + 3) // 4) if text else 0


class TokenEstimator:
    def __init__(self, default_max_tokens: int = 1024, tokenizer: str = "heuristic", max_chars: int = 8000) -> None:
        self.default_max_tokens = default_max_tokens
        self.bytes = tokenizer == "bytes"              # "auto" (the former BPE setting) = heuristic
        self.max_chars = max_chars

    def estimate(self, call: Any, model: str) -> int:
        """`model` is the upstream model (kept for the interface: no estimate here depends on it)."""
        body = call.body
        if call.endpoint == "embeddings":
            return self.count_inputs(body.get("input"))
        n = self.count_inputs(body.get("prompt")) if call.endpoint == "completions" else 0
        parts: list[str] = []
        messages = body.get("messages")
        for m in messages if isinstance(messages, list) else ():
            if not isinstance(m, dict):
                continue
            n += PER_MESSAGE
            c = m.get("content")
            if isinstance(c, str):
                parts.append(c)
            elif isinstance(c, list):
                for p in c:
                    if isinstance(p, dict):
                        if isinstance(p.get("text"), str):
                            parts.append(p["text"])
                        elif p.get("type") in ("image_url", "input_image", "image"):
                            n += IMAGE_TOKENS
            for k in ("tool_calls", "function_call"):
                if m.get(k):
                    parts.append(str(m[k]))
        tools = body.get("tools") or body.get("functions")
        if tools:
            parts.append(str(tools))
        n += self.count("\n".join(parts)) + REPLY_PRIMING
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = self.default_max_tokens
        choices = body.get("n")
        return n + limit * (choices if isinstance(choices, int) and 1 <= choices <= 128 else 1)

    def count_inputs(self, inp: Any) -> int:
        if isinstance(inp, str):
            return self.count(inp)
        if isinstance(inp, list):
            if inp and all(isinstance(x, int) for x in inp):
                return len(inp)               # one pre-tokenised input
            return sum(len(x) if isinstance(x, list) else self.count(str(x)) for x in inp)
        return 0

    def count(self, text: str) -> int:
        if not text:
            return 0
        if self.bytes:
            return len(text.encode())
        if len(text) > self.max_chars:
            return (len(text) + 3) // 4           # no word split: bounded CPU and memory per request
        return heuristic(text)
