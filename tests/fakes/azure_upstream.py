"""A fake Azure OpenAI resource: /openai/deployments/{deployment}/chat/completions|embeddings and
/openai/models, each requiring `api-version` and the `api-key` header (or a bearer token), answering in
Azure's dialect of OpenAI's format (prompt_filter_results, content_filter_results, string status codes)."""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

API_KEY = "azure-upstream-key"
FILTER_OK = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
             "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}


class FakeAzure:
    """`mode`: ok | tools | content_filter (400) | filtered (200, finish_reason content_filter) | error429.
    `bearer` set: expects `Authorization: Bearer <bearer>` instead of `api-key`."""

    def __init__(self, api_version: str = "2024-10-21", bearer: str | None = None) -> None:
        self.mode = "ok"
        self.api_version = api_version
        self.bearer = bearer
        self.reply = "Hello from the fake Azure deployment"
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.paths: list[str] = []
        self.app = web.Application()
        self.app.router.add_post("/openai/deployments/{deployment}/chat/completions", self.chat)
        self.app.router.add_post("/openai/deployments/{deployment}/embeddings", self.embeddings)
        self.app.router.add_get("/openai/models", self.models)
        self.server: Any = None

    def _denied(self, request: web.Request) -> web.Response | None:
        if request.query.get("api-version") != self.api_version:
            return web.json_response({"error": {"code": "404", "message": "Resource not found"}}, status=404)
        ok = (request.headers.get("Authorization") == f"Bearer {self.bearer}" if self.bearer
              else request.headers.get("api-key") == API_KEY)
        if not ok:
            return web.json_response({"error": {"code": "401", "message": "Access denied due to invalid subscription "
                                                 "key or wrong API endpoint. Make sure to provide a valid key for an "
                                                 "active subscription and use a correct regional API endpoint for "
                                                 "your resource."}}, status=401)
        return None

    async def _record(self, request: web.Request) -> dict[str, Any]:
        body = await request.json()
        self.requests.append(body)
        self.headers.append(dict(request.headers))
        self.paths.append(request.path_qs)
        return body

    async def models(self, request: web.Request) -> web.Response:
        return self._denied(request) or web.json_response(
            {"data": [{"id": "gpt-4o-mini", "object": "model", "status": "succeeded"}], "object": "list"})

    async def embeddings(self, request: web.Request) -> web.Response:
        denied = self._denied(request)
        if denied:
            return denied
        body = await self._record(request)
        inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
        return web.json_response({"object": "list", "model": "text-embedding-3-small",
                                  "data": [{"object": "embedding", "index": i, "embedding": [0.25, 0.5, 0.75]}
                                           for i, _ in enumerate(inputs)],
                                  "usage": {"prompt_tokens": 2 * len(inputs), "total_tokens": 2 * len(inputs)}})

    async def chat(self, request: web.Request) -> web.StreamResponse:
        denied = self._denied(request)
        if denied:
            return denied
        body = await self._record(request)
        if self.mode == "content_filter":
            return web.json_response({"error": {
                "message": "The response was filtered due to the prompt triggering Azure OpenAI's content management "
                           "policy. Please modify your prompt and retry.",
                "type": None, "param": "prompt", "code": "content_filter", "status": 400,
                "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
                    **FILTER_OK, "violence": {"filtered": True, "severity": "medium"}}}}}, status=400)
        if self.mode == "error429":
            return web.json_response({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create "
                                                "Operation under Azure OpenAI API version 2024-10-21 have exceeded "
                                                "token rate limit of your current AIServices S0 pricing tier. Please "
                                                "retry after 2 seconds."}},
                                     status=429, headers={"retry-after": "2", "retry-after-ms": "1500"})
        deployment = request.match_info["deployment"]
        created, cid = int(time.time()), "chatcmpl-azure"
        usage = {"prompt_tokens": 9, "completion_tokens": 6, "total_tokens": 15}
        finish = "content_filter" if self.mode == "filtered" else "stop"
        message: dict[str, Any] = {"role": "assistant", "content": self.reply}
        if self.mode == "tools" and body.get("tools"):
            finish = "tool_calls"
            message = {"role": "assistant", "content": None, "tool_calls": [
                {"id": f"call_az{i}", "type": "function",
                 "function": {"name": t["function"]["name"], "arguments": '{"city":"Paris"}'}}
                for i, t in enumerate(body["tools"])]}
        prompt_filter = [{"prompt_index": 0, "content_filter_results": FILTER_OK}]
        if not body.get("stream"):
            return web.json_response({
                "id": cid, "object": "chat.completion", "created": created, "model": "gpt-4o-mini-2024-07-18",
                "prompt_filter_results": prompt_filter, "system_fingerprint": "fp_azure",
                "choices": [{"index": 0, "message": message, "finish_reason": finish, "logprobs": None,
                             "content_filter_results": {} if message.get("tool_calls") else FILTER_OK}],
                "usage": usage, "deployment": deployment})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        def event(obj: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(obj) + b"\n\n"

        def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
            return event({"id": cid, "object": "chat.completion.chunk", "created": created,
                          "model": "gpt-4o-mini-2024-07-18", "system_fingerprint": "fp_azure",
                          "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None,
                                       "content_filter_results": FILTER_OK if delta.get("content") else {}}]})

        await resp.write(event({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                                "prompt_filter_results": prompt_filter}))
        await resp.write(chunk({"role": "assistant", "content": ""}))
        if message.get("tool_calls"):
            for i, tc in enumerate(message["tool_calls"]):
                await resp.write(chunk({"tool_calls": [{"index": i, **tc, "function": {
                    "name": tc["function"]["name"], "arguments": ""}}]}))
                await resp.write(chunk({"tool_calls": [{"index": i, "function": {
                    "arguments": tc["function"]["arguments"]}}]}))
        else:
            for i, w in enumerate(self.reply.split(" ")):
                await resp.write(chunk({"content": ("" if i == 0 else " ") + w}))
        await resp.write(chunk({}, finish))
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(event({"id": cid, "object": "chat.completion.chunk", "created": created,
                                    "model": "gpt-4o-mini-2024-07-18", "choices": [], "usage": usage}))
        await resp.write(b"data: [DONE]\n\n")
        return resp
