"""Token estimate reserved against tokens-per-minute limits before a call (settled to real usage after).

prompt tokens + the completion budget (`max_completion_tokens` / `max_tokens`, else `limits.default_max_tokens`).
Prompt tokens are counted with OpenAI's BPE tables (the `bpe-openai` package ships them: no download) when
the upstream model is one it knows (gpt-4o*, gpt-4*, gpt-3.5*, text-embedding-*...); otherwise, or for
prompts over `tokenizer_max_chars`, with the heuristic: one token per 4 characters (at least one per
word), +3 per message and +3 for the reply's priming (OpenAI's chat accounting), 765 per image part.
The tables load in a worker thread on first need; until then the heuristic is used (never blocks the loop).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from proxy.cost.tokens import encoding_for

log = logging.getLogger("proxy.limits")

PER_MESSAGE = 3
REPLY_PRIMING = 3
IMAGE_TOKENS = 765          # a 1024x1024 image at detail=high (OpenAI's tiling formula); settled after


# Loaded BPE tables are immutable and take ~0.4 s each to build: one copy per process, shared by every app.
_TABLES: dict[str, Any] = {}
_LOADING: set[str] = set()


def heuristic(text: str) -> int:
    return max(len(text.split()), (len(text) + 3) // 4) if text else 0


class TokenEstimator:
    def __init__(self, default_max_tokens: int = 1024, tokenizer: str = "auto", max_chars: int = 8000) -> None:
        self.default_max_tokens = default_max_tokens
        self.use_bpe = tokenizer == "auto"
        self.max_chars = max_chars
        self._enc_name: dict[str, str | None] = {}     # model -> encoding name (None: unknown model)
        self._enc = _TABLES                             # encoding name -> loaded Encoding (process-wide)

    def estimate(self, call: Any, model: str) -> int:
        body = call.body
        if call.endpoint == "embeddings":
            return self.count_inputs(body.get("input"), model)
        n = 0
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
        n += self.count("\n".join(parts), model) + REPLY_PRIMING
        limit = body.get("max_completion_tokens") or body.get("max_tokens")
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 1:
            limit = self.default_max_tokens
        choices = body.get("n")
        return n + limit * (choices if isinstance(choices, int) and 1 <= choices <= 128 else 1)

    def count_inputs(self, inp: Any, model: str) -> int:
        if isinstance(inp, str):
            return self.count(inp, model)
        if isinstance(inp, list):
            if inp and all(isinstance(x, int) for x in inp):
                return len(inp)               # one pre-tokenised input
            return sum(len(x) if isinstance(x, list) else self.count(str(x), model) for x in inp)
        return 0

    def count(self, text: str, model: str) -> int:
        if not text:
            return 0
        if self.use_bpe and len(text) <= self.max_chars:
            enc = self._encoding(model)
            if enc is not None:
                try:
                    return len(enc.encode_ordinary(text))
                except Exception:       # the tokenizer refuses some inputs: fall back, never fail
                    pass
        return heuristic(text)

    def _encoding(self, model: str) -> Any:
        name = self._enc_name.get(model, "")
        if name == "":
            name = self._enc_name[model] = _encoding_name(model)
        if name is None:
            return None
        enc = self._enc.get(name)
        if enc is None and name not in _LOADING:
            _LOADING.add(name)
            threading.Thread(target=self._load, args=(name,), daemon=True, name="bpe-load").start()
        return enc

    def _load(self, name: str) -> None:
        try:
            import bpe_openai
            self._enc[name] = bpe_openai.get_encoding(name)
        except Exception as e:
            log.warning("token tables %s unavailable (%s): using the chars/4 heuristic", name, type(e).__name__)

    def preload(self, model: str) -> None:
        """Start loading the tables `model` needs (in a thread); no-op for unknown models."""
        if self.use_bpe:
            self._encoding(model)


def _encoding_name(model: str) -> str | None:
    # One model -> encoding rule for the gateway (proxy/cost/tokens.py). bpe_openai's own
    # encoding_name_for_model() loads every table it knows (~1 s of CPU, ~100 MB) just to answer.
    return encoding_for(model)
