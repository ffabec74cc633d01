"""A fast fake OpenAI upstream, run in its own process:
`python -m bench.fake_upstream PORT [CHUNKS] [DELAY_MS] [GAP_MS]`: CHUNKS content deltas per stream (default
20); DELAY_MS before the answer or the first chunk (default 0: zero latency); GAP_MS between stream chunks
(default 0; 50 makes the field's trickling upstream)."""

from __future__ import annotations

import asyncio
import sys

import orjson
from aiohttp import web

CHUNKS = int(sys.argv[2]) if len(sys.argv) > 2 else 20
DELAY = int(sys.argv[3]) / 1000 if len(sys.argv) > 3 else 0.0
GAP = int(sys.argv[4]) / 1000 if len(sys.argv) > 4 else 0.0
BODY = orjson.dumps({
    "id": "chatcmpl-bench", "object": "chat.completion", "created": 1700000000, "model": "bench",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "word " * 40}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 40, "total_tokens": 52}})


def _chunk(content: str, finish: str | None = None) -> bytes:
    return b"data: " + orjson.dumps({"id": "chatcmpl-bench", "object": "chat.completion.chunk",
                                     "created": 1700000000, "model": "bench",
                                     "choices": [{"index": 0, "delta": {"content": content},
                                                  "finish_reason": finish}]}) + b"\n\n"


STREAM = [_chunk("word ") for _ in range(CHUNKS)] + [_chunk("", "stop")]
USAGE = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":1700000000,"model":"bench",'
         b'"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":20,"total_tokens":32}}\n\n')


async def chat(request: web.Request) -> web.StreamResponse:
    body = orjson.loads(await request.read())
    if DELAY:
        await asyncio.sleep(DELAY)
    if not body.get("stream"):
        return web.Response(body=BODY, content_type="application/json")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i, c in enumerate(STREAM):
        if GAP and i:
            await asyncio.sleep(GAP)
        await resp.write(c)
    if (body.get("stream_options") or {}).get("include_usage"):
        await resp.write(USAGE)
    await resp.write(b"data: [DONE]\n\n")
    return resp


def main() -> None:
    import uvloop
    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    uvloop.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None, backlog=4096)


if __name__ == "__main__":
    main()
