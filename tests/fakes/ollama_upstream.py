"""A fake Ollama server speaking the native API: /api/chat (NDJSON, written in odd-sized pieces), /api/embed,
/api/tags. It records what it received; `mode` switches its behaviour."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from aiohttp import web

CREATED = "2024-07-22T20:33:28.123648Z"


class FakeOllama:
    """`mode`: ok | tools | length | error404 | error400 | error429 | error500 | error503 | midstream_error |
    no_done. With `tools` the model calls every tool it was given, once each, in one message."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.reply = "Hello from the fake Ollama"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.piece = 7            # stream bytes are written in pieces this big, splitting lines anywhere
        self.app = web.Application()
        self.app.router.add_post("/api/chat", self.chat)
        self.app.router.add_post("/api/embed", self.embed)
        self.app.router.add_get("/api/tags", self.tags)
        self.server: Any = None

    def _record(self, request: web.Request, body: dict[str, Any]) -> None:
        self.requests.append(body)
        self.headers.append(dict(request.headers))

    async def tags(self, request: web.Request) -> web.Response:
        return web.json_response({"models": [{"name": "llama3.2:latest", "model": "llama3.2:latest",
                                              "modified_at": CREATED, "size": 2019393189, "digest": "a80c4f17"}]})

    def _error(self) -> web.Response | None:
        errors = {"error404": (404, 'model "llama9" not found, try pulling it first'),
                  "error400": (400, "invalid options: num_ctx must be a number"),
                  "error429": (429, "too many requests"),
                  "error500": (500, "llama runner process has terminated: signal: killed"),
                  "error503": (503, "server busy, please try again.  maximum pending requests exceeded")}
        if self.mode in errors:
            status, msg = errors[self.mode]
            return web.json_response({"error": msg}, status=status,
                                     headers={"Retry-After": "2"} if status == 429 else None)
        return None

    async def embed(self, request: web.Request) -> web.Response:
        body = await request.json()
        self._record(request, body)
        err = self._error()
        if err is not None:
            return err
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"model": body["model"],
                                  "embeddings": [[0.5, -0.25, float(i)] for i, _ in enumerate(inputs)],
                                  "total_duration": 14143917, "load_duration": 1019500,
                                  "prompt_eval_count": 3 * len(inputs)})

    def _message(self, body: dict[str, Any]) -> tuple[dict[str, Any], str]:
        if self.mode == "tools" and body.get("tools"):
            calls = [{"id": f"call_{i:08d}", "function": {"index": i, "name": t["function"]["name"],
                                                          "arguments": {"city": "Paris", "n": i}}}
                     for i, t in enumerate(body["tools"])]
            return {"role": "assistant", "content": "", "tool_calls": calls}, "stop"
        return {"role": "assistant", "content": self.reply}, "length" if self.mode == "length" else "stop"

    async def chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        self._record(request, body)
        err = self._error()
        if err is not None:
            return err
        message, reason = self._message(body)
        stats = {"total_duration": 885095291, "load_duration": 3753500, "prompt_eval_count": 12,
                 "prompt_eval_duration": 328493000, "eval_count": 5, "eval_duration": 552222000}
        if not body.get("stream", True):
            return web.json_response({"model": body["model"], "created_at": CREATED, "message": message,
                                      "done_reason": reason, "done": True, **stats})
        lines = []
        words = message["content"].split(" ") if message["content"] else []
        for i, w in enumerate(words):
            lines.append({"model": body["model"], "created_at": CREATED,
                          "message": {"role": "assistant", "content": ("" if i == 0 else " ") + w}, "done": False})
            if self.mode == "midstream_error" and i == 1:
                lines.append({"error": "an error was encountered while running the model"})
                break
        if message.get("tool_calls"):
            for tc in message["tool_calls"]:    # Ollama streams each parsed tool call whole
                lines.append({"model": body["model"], "created_at": CREATED,
                              "message": {"role": "assistant", "content": "", "tool_calls": [tc]}, "done": False})
        if self.mode not in ("midstream_error", "no_done"):
            lines.append({"model": body["model"], "created_at": CREATED,
                          "message": {"role": "assistant", "content": ""}, "done_reason": reason, "done": True,
                          **stats})
        raw = b"".join(orjson.dumps(x) + b"\n" for x in lines)
        resp = web.StreamResponse(headers={"Content-Type": "application/x-ndjson"})
        await resp.prepare(request)
        for i in range(0, len(raw), self.piece):
            await resp.write(raw[i:i + self.piece])
            await asyncio.sleep(0)
        return resp
