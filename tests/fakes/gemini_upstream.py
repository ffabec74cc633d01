"""A fake Gemini Developer API (REST, v1beta) speaking the real wire format. It records what it received.

generateContent, streamGenerateContent?alt=sse, batchEmbedContents and models.list, with faults picked by
`mode`: ok | tools | parallel_tools | blocked | error429 | error400_context | error503 | bad_key | midstream_error.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

MODEL = "gemini-2.5-flash"


class FakeGemini:
    def __init__(self, key: str = "gm-upstream-secret") -> None:
        self.key = key
        self.mode = "ok"
        self.reply = "Hello from fake Gemini"
        self.requests: list[dict[str, Any]] = []
        self.paths: list[str] = []        # path + query of each request, to check the key is not in the URL
        self.headers: list[dict[str, str]] = []
        self.app = web.Application()
        self.app.router.add_post("/v1beta/models/{action}", self.dispatch)
        self.app.router.add_get("/v1beta/models", self.list_models)
        self.server: Any = None

    def _record(self, request: web.Request, body: dict[str, Any] | None) -> web.Response | None:
        self.paths.append(request.path_qs)
        self.headers.append(dict(request.headers))
        if body is not None:
            self.requests.append(body)
        if request.headers.get("x-goog-api-key") != self.key or self.mode == "bad_key":
            return _error(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                          [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                            "domain": "googleapis.com"}])
        return None

    async def list_models(self, request: web.Request) -> web.Response:
        denied = self._record(request, None)
        if denied is not None:
            return denied
        return web.json_response({"models": [{"name": f"models/{MODEL}", "displayName": "Gemini 2.5 Flash",
                                              "supportedGenerationMethods": ["generateContent"]}],
                                  "nextPageToken": "x"})

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        denied = self._record(request, body)
        if denied is not None:
            return denied
        model, _, method = request.match_info["action"].partition(":")
        if method == "batchEmbedContents":
            return web.json_response({"embeddings": [
                {"values": [0.25 * (i + 1), -0.5, 1.0]} for i, _ in enumerate(body["requests"])]})
        if self.mode == "error429":
            return _error(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota.",
                          [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "7s"}])
        if self.mode == "error400_context":
            return _error(400, "INVALID_ARGUMENT",
                          "The input token count (2000000) exceeds the maximum number of tokens allowed (1048576).")
        if self.mode == "error503":
            return _error(503, "UNAVAILABLE", "The model is overloaded. Please try again later.")
        events = self._events(model)
        if method == "generateContent":
            return web.json_response(_merge(events))
        if method != "streamGenerateContent" or request.query.get("alt") != "sse":
            return _error(404, "NOT_FOUND", f"Method {method} not found.")
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for i, ev in enumerate(events):
            if self.mode == "midstream_error" and i == 1:
                await resp.write(b"data: " + orjson.dumps({"error": {
                    "code": 500, "message": "An internal error has occurred.", "status": "INTERNAL"}}) + b"\r\n\r\n")
                return resp
            await resp.write(b"data: " + orjson.dumps(ev) + b"\r\n\r\n")
        return resp

    def _events(self, model: str) -> list[dict[str, Any]]:
        """The answer as a list of GenerateContentResponse events (the stream); a plain call merges them."""
        if self.mode == "blocked":
            return [{"promptFeedback": {"blockReason": "SAFETY"},
                     "usageMetadata": {"promptTokenCount": 6, "totalTokenCount": 6}, "modelVersion": model}]
        usage = {"promptTokenCount": 11, "candidatesTokenCount": 5, "thoughtsTokenCount": 2,
                 "cachedContentTokenCount": 4, "totalTokenCount": 18}
        if self.mode in ("tools", "parallel_tools"):
            calls = [{"functionCall": {"name": "get_weather", "args": {"city": "Paris"}}, "thoughtSignature": "c2ln"}]
            if self.mode == "parallel_tools":
                calls.append({"functionCall": {"name": "get_time", "args": {"tz": "Europe/Paris"}}})
            return [{"candidates": [{"content": {"role": "model", "parts": calls}, "finishReason": "STOP",
                                     "index": 0}], "usageMetadata": usage, "modelVersion": model}]
        words = self.reply.split(" ")
        events: list[dict[str, Any]] = [{"candidates": [{"content": {"role": "model", "parts": [{"text": ("" if i == 0 else " ") + w}]},
                                   "index": 0}],
                   "usageMetadata": {"promptTokenCount": 11, "totalTokenCount": 11}, "modelVersion": model}
                  for i, w in enumerate(words)]
        events[-1]["candidates"][0]["finishReason"] = "STOP"
        events[-1]["usageMetadata"] = usage
        return events


def _merge(events: list[dict[str, Any]]) -> dict[str, Any]:
    last = dict(events[-1])
    if "candidates" in last:
        parts = [p for ev in events for p in ev["candidates"][0]["content"]["parts"]]
        text = "".join(p.get("text", "") for p in parts if "text" in p)
        merged = ([{"text": text}] if text else []) + [p for p in parts if "text" not in p]
        last["candidates"] = [{**last["candidates"][0], "content": {"role": "model", "parts": merged}}]
    return last


def _error(code: int, status: str, message: str, details: list[dict[str, Any]] | None = None) -> web.Response:
    err: dict[str, Any] = {"code": code, "message": message, "status": status}
    if details:
        err["details"] = details
    return web.json_response({"error": err}, status=code)
