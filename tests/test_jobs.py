"""Async jobs: 202 + Location, poll, result equal to the synchronous answer, cancel, TTL, visibility per key,
Idempotency-Key, and signed webhooks retried with one webhook-id (a receiver that verifies them)."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import pytest
from aiohttp import web
from standardwebhooks.webhooks import Webhook

from tests.conftest import make_config
from tests.cost_helpers import ADMIN, request
from tests.keys_helpers import create_key, ledger_url  # noqa: F401 - fixture

MSG = [{"role": "user", "content": "a job for later"}]
SECRET = "whsec_" + base64.b64encode(b"0123456789abcdef0123456789abcdef").decode()
ASYNC = {**ADMIN, "x-llm-async": "true"}


def _config(tmp_path, database: str | None = None, **sections: Any):
    jobs = {"poll_interval": 0.02, **sections.pop("jobs", {})}
    return make_config(storage={"database": database or f"sqlite:///{tmp_path}/l.db"}, jobs=jobs,
                       providers={"local": {"type": "mock", **sections.pop("mock", {})}}, **sections)


async def _poll(url: str, job_id: str, headers: dict[str, str] = ADMIN) -> tuple[int, dict]:
    for _ in range(300):
        st, b, _ = await request(url, "GET", f"/v1/jobs/{job_id}", headers=headers)
        if st != 202:
            return st, b
        assert b["status"] in ("queued", "in_progress")
        await asyncio.sleep(0.02)
    raise AssertionError("the job never ended")


async def test_job_answers_202_then_the_synchronous_result(start_proxy, tmp_path, ledger_url):  # noqa: F811
    url = str((await start_proxy(_config(tmp_path, ledger_url))).make_url(""))
    body = {"model": "mock", "messages": MSG, "max_tokens": 6}
    st, sync, _ = await request(url, "POST", "/v1/chat/completions", body)
    assert st == 200
    st, job, h = await request(url, "POST", "/v1/chat/completions", body, headers=ASYNC)
    h = {k.lower(): v for k, v in h.items()}
    assert st == 202 and job["object"] == "job" and job["status"] == "queued" and job["id"].startswith("job_")
    assert h["location"] == f"/v1/jobs/{job['id']}" and h["retry-after"] == "1"
    assert set(job) == {"id", "object", "status", "created_at", "started_at", "completed_at", "result", "error"}
    st, done = await _poll(url, job["id"])
    assert st == 200 and done["status"] == "completed" and done["error"] is None
    assert done["started_at"] is not None and done["completed_at"] >= done["started_at"]
    res = done["result"]
    assert res["object"] == "chat.completion" and res["choices"] == sync["choices"] and res["usage"] == sync["usage"]
    # exactly one usage event for the job, marked async
    for _ in range(100):
        st, ev, _ = await request(url, "GET", "/v1/usage?request_id=req_" + job["id"].removeprefix("job_"))
        if ev["data"]:
            break
        await asyncio.sleep(0.05)
    assert len(ev["data"]) == 1 and ev["data"][0]["metadata"]["async"] is True


async def test_envelope_async_and_a_failed_job(start_proxy, tmp_path):
    url = str((await start_proxy(_config(tmp_path))).make_url(""))
    st, job, _ = await request(url, "POST", "/v1/requests", {"request": {
        "model": "mock", "messages": MSG, "options": {"async": True, "max_tokens": 2, "batch_id": "g"}}})
    assert st == 202, job
    st, done = await _poll(url, job["id"])
    assert st == 200 and done["result"]["usage"]["completion_tokens"] == 2
    # bad input is refused at submission, with the envelope's path
    st, b, _ = await request(url, "POST", "/v1/requests", {"request": {
        "model": "mock", "messages": [{"role": "x"}], "options": {"async": True}}})
    assert st == 400 and b["error"]["param"] == "request.messages[0].role"
    st, b, _ = await request(url, "POST", "/v1/requests", {"request": {
        "model": "nope", "messages": MSG, "options": {"async": True}}})
    assert st == 404 and b["error"]["code"] == "model_not_found"


async def test_cancel_visibility_ttl_and_idempotency(start_proxy, tmp_path):
    cfg = _config(tmp_path, mock={"first_token_delay_ms": 3000}, jobs={"result_ttl": 0.3})
    server = await start_proxy(cfg)
    url = str(server.make_url(""))
    other = {"Authorization": f"Bearer {(await create_key(server, name='other'))['key']}"}
    mine = {"Authorization": f"Bearer {(await create_key(server, name='mine'))['key']}"}
    body = {"model": "mock", "messages": MSG}
    st, job, _ = await request(url, "POST", "/v1/chat/completions", body, headers={**mine, "x-llm-async": "true",
                                                                                    "Idempotency-Key": "k1"})
    assert st == 202
    st, again, _ = await request(url, "POST", "/v1/chat/completions", body,
                                 headers={**mine, "x-llm-async": "true", "Idempotency-Key": "k1"})
    assert st == 202 and again["id"] == job["id"]
    st, b, _ = await request(url, "POST", "/v1/chat/completions", {**body, "max_tokens": 3},
                             headers={**mine, "x-llm-async": "true", "Idempotency-Key": "k1"})
    assert st == 409 and b["error"]["code"] == "idempotency_key_reused"
    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/cancel"):
        st, b, _ = await request(url, "POST" if path.endswith("cancel") else "GET", path, headers=other)
        assert st == 404 and b["error"]["code"] == "not_found"
    for _ in range(100):                             # the worker took it: in_progress
        st, b, _ = await request(url, "GET", f"/v1/jobs/{job['id']}", headers=ADMIN)
        if b["status"] == "in_progress":
            break
        await asyncio.sleep(0.02)
    assert st == 202 and b["status"] == "in_progress"
    st, b, _ = await request(url, "POST", f"/v1/jobs/{job['id']}/cancel", headers=mine)
    assert st == 200 and b["status"] == "cancelled" and b["error"]["code"] == "job_cancelled"
    st, b, _ = await request(url, "GET", f"/v1/jobs/{job['id']}", headers=mine)
    assert st == 200 and b["status"] == "cancelled" and b["result"] is None
    await asyncio.sleep(0.4)                         # result_ttl: 0.3 s
    st, b, _ = await request(url, "GET", f"/v1/jobs/{job['id']}", headers=mine)
    assert st == 404


class Receiver:
    """A webhook endpoint that verifies each delivery and fails the first `fail` attempts of each id."""

    def __init__(self, fail: int) -> None:
        self.fail, self.seen, self.verified = fail, [], []
        self.app = web.Application()
        self.app.router.add_post("/hook", self.hook)
        self.wh = Webhook(SECRET)

    async def hook(self, request: web.Request) -> web.Response:
        raw = await request.read()
        payload = self.wh.verify(raw, dict(request.headers))       # raises if the signature is wrong
        msg_id = request.headers["webhook-id"]
        self.seen.append(msg_id)
        if self.seen.count(msg_id) <= self.fail:
            return web.Response(status=500)
        self.verified.append(payload)
        return web.Response(status=204)


async def test_webhook_signed_and_retried_with_one_id(start_proxy, aiohttp_server, tmp_path,
                                                     ledger_url):  # noqa: F811
    rx = Receiver(fail=2)
    hook_server = await aiohttp_server(rx.app)
    hook = str(hook_server.make_url("/hook"))
    cfg = _config(tmp_path, ledger_url, webhooks={"allow_hosts": ["127.0.0.1"], "secret": SECRET,
                                                  "backoff_base": 0.05, "max_attempts": 4})
    url = str((await start_proxy(cfg)).make_url(""))
    st, job, _ = await request(url, "POST", "/v1/requests", {"request": {
        "model": "mock", "messages": MSG, "options": {"async": True, "webhook_url": hook}}})
    assert st == 202, job
    for _ in range(200):
        if rx.verified:
            break
        await asyncio.sleep(0.02)
    [payload] = rx.verified
    assert len(rx.seen) == 3 and len(set(rx.seen)) == 1           # two failures, then delivered: one id
    assert payload["type"] == "job.completed" and payload["data"]["id"] == job["id"]
    assert payload["data"]["result"]["object"] == "chat.completion"


async def test_webhook_refused_hosts_and_failed_list(start_proxy, aiohttp_server, tmp_path):
    rx = Receiver(fail=100)
    hook = str((await aiohttp_server(rx.app)).make_url("/hook"))
    cfg = _config(tmp_path, webhooks={"allow_hosts": ["127.0.0.1"], "secret": SECRET, "backoff_base": 0.01,
                                      "max_attempts": 2})
    url = str((await start_proxy(cfg)).make_url(""))
    st, b, _ = await request(url, "POST", "/v1/requests", {"request": {
        "model": "mock", "messages": MSG, "options": {"async": True, "webhook_url": "http://10.0.0.1/x"}}})
    assert st == 400 and b["error"]["param"] == "request.options.webhook_url"
    st, b, _ = await request(url, "POST", "/v1/chat/completions", {"model": "mock", "messages": MSG},
                             headers={**ASYNC, "x-llm-webhook-url": "http://localhost:1/x"})
    assert st == 400 and b["error"]["param"] == "x-llm-webhook-url"
    st, job, _ = await request(url, "POST", "/v1/chat/completions", {"model": "mock", "messages": MSG},
                               headers={**ASYNC, "x-llm-webhook-url": hook})
    assert st == 202
    for _ in range(200):
        st, failed, _ = await request(url, "GET", "/admin/webhooks/failed")
        if failed["data"]:
            break
        await asyncio.sleep(0.02)
    [d] = failed["data"]
    assert d["job_id"] == job["id"] and d["attempts"] == 2 and d["last_error"] == "HTTP 500"
    assert len(rx.seen) == 2 and len(set(rx.seen)) == 1


@pytest.mark.parametrize("value", ["false", "0"])
async def test_async_header_off_is_a_live_call(start_proxy, tmp_path, value):
    url = str((await start_proxy(_config(tmp_path))).make_url(""))
    st, b, _ = await request(url, "POST", "/v1/chat/completions", {"model": "mock", "messages": MSG},
                             headers={**ADMIN, "x-llm-async": value})
    assert st == 200 and b["object"] == "chat.completion"


async def test_job_with_the_openai_sdk_as_the_readme_shows(start_proxy, tmp_path):
    import openai

    from tests.conftest import MASTER
    server = await start_proxy(_config(tmp_path))
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    raw = await client.chat.completions.with_raw_response.create(
        model="mock", messages=MSG, extra_headers={"x-llm-async": "true"})
    assert raw.http_response.status_code == 202
    job_id = raw.http_response.json()["id"]
    for _ in range(200):
        j = await client.get(f"/jobs/{job_id}", cast_to=object)
        if j["status"] not in ("queued", "in_progress"):
            break
        await asyncio.sleep(0.02)
    assert j["status"] == "completed" and j["result"]["object"] == "chat.completion"
    await client.close()
