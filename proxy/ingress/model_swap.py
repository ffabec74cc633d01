"""Replace the top-level `model` value of a JSON body in its bytes, leaving every other byte as it was
(pass-through: thinking signatures, prompt-cache prefixes and key order must survive untouched)."""

from __future__ import annotations

import re

import orjson

_MODEL = re.compile(rb'"model"\s*:\s*("(?:[^"\\]|\\.)*")')
_TOKEN = re.compile(rb'"(?:[^"\\]|\\.)*"|[{}\[\]]')


def with_model(raw: bytes, model: str) -> bytes:
    hits = list(_MODEL.finditer(raw))
    m = hits[0] if len(hits) == 1 else _top_level(raw, hits)
    if m is None:
        raise ValueError("the body has no top-level string 'model'")
    new = orjson.dumps(model)
    if m.group(1) == new:
        return raw
    return raw[:m.start(1)] + new + raw[m.end(1):]


def _top_level(raw: bytes, hits: list[re.Match[bytes]]) -> re.Match[bytes] | None:
    """More than one `"model":` in the body (nested objects): the one at depth 1 (strings skipped whole,
    so brackets inside them do not count)."""
    starts = {m.start(): m for m in hits}
    depth = 0
    for t in _TOKEN.finditer(raw):
        tok = t.group()
        if tok in (b"{", b"["):
            depth += 1
        elif tok in (b"}", b"]"):
            depth -= 1
        elif depth == 1 and t.start() in starts:
            return starts[t.start()]
    return None
