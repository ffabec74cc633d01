"""Shared by the GraphQL tests: raw HTTP GraphQL calls, and a small graphql-transport-ws client on aiohttp."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import aiohttp
import orjson

from tests.conftest import MASTER

ADMIN = {"Authorization": f"Bearer {MASTER}"}
PROTOCOL = "graphql-transport-ws"
CHAT = """mutation Chat($input: ChatInput!) {
  chatCompletion(input: $input) { id requestId model content finishReason cached costUsd
    toolCalls { id type function { name arguments } }
    usage { promptTokens completionTokens totalTokens cachedTokens } }
}"""
STREAM = """subscription Stream($input: ChatInput!) {
  chatCompletionStream(input: $input) { id requestId model delta finishReason
    toolCallDeltas { index id function { name arguments } }
    usage { promptTokens completionTokens totalTokens cachedTokens } }
}"""


async def gql(url: str, query: str, variables: dict[str, Any] | None = None,
              headers: dict[str, str] | None = None, method: str = "POST") -> tuple[int, dict[str, Any]]:
    """One GraphQL operation over HTTP (POST JSON, or GET with query parameters)."""
    async with aiohttp.ClientSession() as s:
        h = ADMIN if headers is None else headers
        if method == "GET":
            params = {"query": query}
            if variables:
                params["variables"] = orjson.dumps(variables).decode()
            req = s.get(url + "/graphql", params=params, headers=h)
        else:
            req = s.post(url + "/graphql", data=orjson.dumps({"query": query, "variables": variables or {}}),
                         headers={**h, "Content-Type": "application/json"})
        async with req as r:
            return r.status, orjson.loads(await r.read())


def codes(doc: dict[str, Any]) -> list[str]:
    return [e.get("extensions", {}).get("code") for e in doc.get("errors") or []]


class WSClient:
    """graphql-transport-ws over aiohttp's WebSocket client: init, subscribe, read frames, complete."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self._ids = itertools.count(1)

    async def init(self, payload: dict[str, Any] | None) -> dict[str, Any]:
        await self.ws.send_str(orjson.dumps({"type": "connection_init", "payload": payload or {}}).decode())
        return await self.recv()

    async def subscribe(self, query: str, variables: dict[str, Any] | None = None) -> str:
        op = str(next(self._ids))
        await self.ws.send_str(orjson.dumps({"id": op, "type": "subscribe",
                                             "payload": {"query": query, "variables": variables or {}}}).decode())
        return op

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        msg = await asyncio.wait_for(self.ws.receive(), within)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "closed", "code": self.ws.close_code, "ws": msg.type}
        return orjson.loads(msg.data)

    async def collect(self, op: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        """`next` payloads until `complete` or `error` for `op`; returns (payloads, last frame)."""
        got = []
        while True:
            m = await self.recv()
            if m.get("type") == "ping":
                await self.ws.send_str('{"type":"pong"}')
                continue
            if m.get("id") != op and m.get("type") != "closed":
                continue
            if m["type"] == "next":
                got.append(m["payload"])
                continue
            return got, m


async def ws_connect(session: aiohttp.ClientSession, url: str, **kw: Any) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(url + "/graphql", protocols=(PROTOCOL,), **kw)


def chat_input(model: str = "mock", content: str = "say something", **extra: Any) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": content}], **extra}
