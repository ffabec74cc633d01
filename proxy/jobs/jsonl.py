"""The batch input file (OpenAI's JSONL): one request a line, checked line by line; errors say `line N`."""

from __future__ import annotations

from typing import Any

import msgspec
import orjson

from proxy.errors import InvalidRequest

ENDPOINTS = {"/v1/chat/completions": "chat.completions", "/v1/embeddings": "embeddings"}


class InputLine(msgspec.Struct, kw_only=True):
    line_no: int                     # 1-based
    custom_id: str
    url: str
    body: dict[str, Any]

    @property
    def model(self) -> str:
        m = self.body.get("model")
        return m if isinstance(m, str) else ""

    @property
    def priority(self) -> int:
        md = self.body.get("metadata")
        p = md.get("priority") if isinstance(md, dict) else None
        if p == "high":
            return 1
        return p if isinstance(p, int) and not isinstance(p, bool) else 0


def _bad(n: int, what: str, code: str = "invalid_request") -> InvalidRequest:
    return InvalidRequest(f"line {n}: {what}", param="file", code=code)


def parse(text: str, max_lines: int) -> list[InputLine]:
    """Every line a JSON object with a unique `custom_id`, `method: POST`, a known `url`, a `body` with a
    `model`. The first bad line is the 400's message."""
    out: list[InputLine] = []
    seen: set[str] = set()
    for n, raw in enumerate(text.splitlines(), start=1):
        if not raw.strip():
            continue
        if len(out) >= max_lines:
            raise _bad(n, f"the file has more than {max_lines} requests", "too_many_lines")
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise _bad(n, "not valid JSON") from None
        if not isinstance(obj, dict):
            raise _bad(n, "expected a JSON object")
        cid = obj.get("custom_id")
        if not isinstance(cid, str) or not cid:
            raise _bad(n, "'custom_id' must be a non-empty string")
        if cid in seen:
            raise _bad(n, f"duplicate custom_id '{cid}'", "duplicate_custom_id")
        seen.add(cid)
        if obj.get("method") != "POST":
            raise _bad(n, "'method' must be 'POST'")
        url = obj.get("url")
        if url not in ENDPOINTS:
            raise _bad(n, f"'url' must be one of {', '.join(ENDPOINTS)}")
        body = obj.get("body")
        if not isinstance(body, dict):
            raise _bad(n, "'body' must be a JSON object")
        if not isinstance(body.get("model"), str) or not body["model"]:
            raise _bad(n, "'body.model' must be a non-empty string")
        if body.get("stream") is True:
            raise _bad(n, "'body.stream' is not supported in a batch")
        out.append(InputLine(line_no=n, custom_id=cid, url=url, body=body))
    if not out:
        raise InvalidRequest("The file has no requests.", param="file", code="empty_file")
    return out
