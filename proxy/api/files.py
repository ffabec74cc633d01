"""/v1/files, OpenAI's surface for batch input and output files: upload (multipart, `purpose=batch`, the
JSONL checked line by line), list, retrieve, content, delete. Scoped to the key that uploaded them."""

from __future__ import annotations

import asyncio
import time
from random import getrandbits
from typing import Any

import orjson
from aiohttp import BodyPartReader, web
from aiohttp.http_exceptions import HttpProcessingError

from proxy.api.guard import list_page
from proxy.api.jobs import caller, runner
from proxy.context import Principal
from proxy.errors import InvalidRequest, NotFound, PayloadTooLarge, ProxyError
from proxy.gateway import GATEWAY
from proxy.jobs import jsonl
from proxy.store import batches as store
from proxy.store.batches import FileRow


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.json_response(obj, status=status, dumps=lambda o: orjson.dumps(o).decode())


async def _read_part(part: BodyPartReader, limit: int) -> bytes:
    buf = bytearray()
    while chunk := await part.read_chunk(1 << 16):
        buf += chunk
        if len(buf) > limit:
            raise PayloadTooLarge(f"The file exceeds the limit of {limit} bytes.", param="file")
    return bytes(buf)


async def _read_upload(request: web.Request, limit: int) -> tuple[str | None, str, bytes | None]:
    """(purpose, filename, file bytes) of a multipart upload."""
    reader = await request.multipart()
    purpose: str | None = None
    filename, data = "", None
    while (part := await reader.next()) is not None:
        if not isinstance(part, BodyPartReader):
            continue
        if part.name == "purpose":
            purpose = (await _read_part(part, 64)).decode(errors="replace").strip()
        elif part.name == "file":
            filename = part.filename or "upload.jsonl"
            data = await _read_part(part, limit)
    return purpose, filename, data


async def create_file(request: web.Request) -> web.Response:
    run = runner(request)
    key = await caller(request)
    cfg = request.app[GATEWAY].config.batches
    if not request.content_type.startswith("multipart/"):
        raise InvalidRequest("Expected a multipart/form-data upload with 'file' and 'purpose'.", param="file")
    seconds = request.app[GATEWAY].config.server.body_timeout
    try:
        async with asyncio.timeout(seconds):            # as every other body (proxy/api/http.py)
            purpose, filename, data = await _read_upload(request, cfg.max_file_bytes)
    except TimeoutError:
        raise ProxyError(f"The request body did not arrive within {seconds:g}s.", status=408,
                         type="invalid_request_error", code="request_timeout") from None
    except (ValueError, HttpProcessingError):           # no boundary, a part cut short, a bad part header
        raise InvalidRequest("The multipart/form-data body is malformed.", param="file",
                             code="invalid_multipart") from None
    if data is None:
        raise InvalidRequest("Missing required parameter: 'file'.", param="file", code="missing_required_parameter")
    if purpose != "batch":
        raise InvalidRequest("Invalid 'purpose': this gateway accepts files with purpose 'batch'.", param="purpose",
                             code="invalid_value")
    try:
        text = data.decode()
    except UnicodeDecodeError:
        raise InvalidRequest("The file is not UTF-8 text.", param="file", code="invalid_file") from None
    jsonl.parse(text, cfg.max_lines)                 # every error names its line
    row = FileRow(id=f"file-{getrandbits(96):024x}", key_id=key.id, filename=filename, purpose="batch",
                  bytes=len(data), created_at=time.time())
    await store.add_file(run.ledger, row, text)
    return _json(row.public())


async def visible_file(request: web.Request, file_id: str, key: Principal, param: str = "file_id") -> FileRow:
    f = await store.get_file(runner(request).ledger, file_id)
    if f is None or (not key.is_master and f.key_id != key.id):
        raise NotFound(f"No such File object: {file_id}", param=param)
    return f


async def get_file(request: web.Request) -> web.Response:
    f = await visible_file(request, request.match_info["id"], await caller(request))
    return _json(f.public())


async def file_content(request: web.Request) -> web.Response:
    f = await visible_file(request, request.match_info["id"], await caller(request))
    text = await store.file_content(runner(request).ledger, f.id) or ""
    return web.Response(body=text.encode(), content_type="application/octet-stream",
                        headers={"Content-Disposition": f'attachment; filename="{f.filename}"'})


async def delete_file(request: web.Request) -> web.Response:
    f = await visible_file(request, request.match_info["id"], await caller(request))
    await store.delete_file(runner(request).ledger, f.id)
    return _json({"id": f.id, "object": "file", "deleted": True})


async def list_files(request: web.Request) -> web.Response:
    key = await caller(request)
    q = request.query
    try:
        limit = min(10_000, max(1, int(q.get("limit", "10000"))))
    except ValueError:
        raise InvalidRequest("Invalid 'limit': expected an integer.", param="limit", code="invalid_type") from None
    order = q.get("order", "desc")
    if order not in ("asc", "desc"):
        raise InvalidRequest("Invalid 'order': expected 'asc' or 'desc'.", param="order", code="invalid_value")
    rows = await store.list_files(runner(request).ledger, None if key.is_master else key.id, q.get("purpose"),
                                  q.get("after"), limit + 1, order)
    data = [f.public() for f in rows[:limit]]
    return _json(list_page(data, len(rows) > limit))


def setup(app: web.Application) -> None:
    app.router.add_post("/v1/files", create_file)
    app.router.add_get("/v1/files", list_files)
    app.router.add_get("/v1/files/{id}", get_file)
    app.router.add_delete("/v1/files/{id}", delete_file)
    app.router.add_get("/v1/files/{id}/content", file_content)
