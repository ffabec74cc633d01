"""The Batch API with the official openai SDK unchanged: files.create, batches.create, batches.retrieve until
done, files.content of the output and error files; every custom_id settled exactly once; validation as
OpenAI does it (line N errors, a model the key may not use fails the batch before anything runs)."""

from __future__ import annotations

import asyncio
import io
from typing import Any

import openai
import orjson
import pytest

from tests.conftest import MASTER, make_config, openai_provider
from tests.cost_helpers import request
from tests.keys_helpers import create_key


def _lines(n: int, model: str = "mock", url: str = "/v1/chat/completions", **extra: Any) -> bytes:
    return b"".join(orjson.dumps({"custom_id": f"req-{i}", "method": "POST", "url": url,
                                  "body": {"model": model, "messages": [{"role": "user", "content": f"line {i}"}],
                                           "max_tokens": 4, **extra}}) + b"\n" for i in range(n))


def _client(server, key: str = MASTER) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)


async def _until_done(client: openai.AsyncOpenAI, batch_id: str, seen: list[str] | None = None):
    for _ in range(600):
        b = await client.batches.retrieve(batch_id)
        if seen is not None:
            seen.append(b.status)
        if b.status in ("completed", "failed", "cancelled", "expired"):
            return b
        await asyncio.sleep(0.02)
    raise AssertionError(f"batch stuck in {b.status}")


def _config(db: str, **sections: Any):
    jobs = {"poll_interval": 0.02, **sections.pop("jobs", {})}
    batches = {"progress_interval": 0.05, **sections.pop("batches", {})}
    return make_config(storage={"database": db}, jobs=jobs, batches=batches, **sections)


async def test_batch_with_the_openai_sdk(start_proxy, tmp_path):
    server = await start_proxy(_config(f"sqlite:///{tmp_path}/l.db"))
    client = _client(server)
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(60))), purpose="batch")
    assert f.object == "file" and f.purpose == "batch" and f.bytes > 0 and f.status == "processed"
    batch = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions",
                                        completion_window="24h", metadata={"run": "t1"})
    assert batch.status == "validating" and batch.metadata == {"run": "t1"}
    seen: list[str] = []
    done = await _until_done(client, batch.id, seen)
    assert done.status == "completed", done.errors
    assert done.request_counts.total == 60 and done.request_counts.completed == 60 and done.request_counts.failed == 0
    assert done.in_progress_at and done.finalizing_at and done.completed_at and done.error_file_id is None
    assert done.usage is not None and done.usage.output_tokens == 60 * 4
    out = (await client.files.content(done.output_file_id)).content.decode().splitlines()
    rows = [orjson.loads(x) for x in out]
    assert sorted(r["custom_id"] for r in rows) == sorted(f"req-{i}" for i in range(60))
    assert all(r["response"]["status_code"] == 200 and r["error"] is None for r in rows)
    assert rows[0]["response"]["body"]["object"] == "chat.completion"
    # each line's response.request_id is its usage event's request id, tagged with the batch
    url = str(server.make_url(""))
    await request(url, "POST", "/v1/chat/completions", {"model": "mock", "messages": [{"role": "user",
                                                                                       "content": "live"}]})
    _, ev, _ = await request(url, "GET", f"/v1/usage?limit=100&batch_id={batch.id}")
    events = {e["request_id"]: e for e in ev["data"]}
    assert len(events) == 60                          # the live call is not in the batch's events
    _, summ, _ = await request(url, "GET", f"/v1/usage/summary?batch_id={batch.id}")
    assert summ["total"]["requests"] == 60 and summ["total"]["completion_tokens"] == 240
    for r in rows:
        e = events[r["response"]["request_id"]]
        assert e["metadata"]["batch_id"] == batch.id and e["metadata"]["async"] is True
        assert e["metadata"]["custom_id"] == r["custom_id"]
    listed = await client.batches.list(limit=10)
    assert [b.id for b in listed.data] == [batch.id]
    files = await client.files.list()
    assert {x.purpose for x in files.data} == {"batch", "batch_output"}


async def test_failed_lines_go_to_the_error_file(start_proxy, fake_openai, tmp_path):
    fake_openai.mode = "error400"
    cfg = _config(f"sqlite:///{tmp_path}/l.db", providers={"up": openai_provider(fake_openai)},
                  models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}])
    client = _client(await start_proxy(cfg))
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(5, "gpt"))), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await _until_done(client, b.id)
    assert done.status == "completed" and done.request_counts.failed == 5 and done.output_file_id is None
    rows = [orjson.loads(x) for x in (await client.files.content(done.error_file_id)).content.splitlines()]
    assert sorted(r["custom_id"] for r in rows) == [f"req-{i}" for i in range(5)]
    assert all(r["response"]["status_code"] == 400 and r["error"]["code"] == "invalid_value" for r in rows)


async def test_validation_names_lines_and_checks_models_before_running(start_proxy, tmp_path):
    server = await start_proxy(_config(f"sqlite:///{tmp_path}/l.db"))
    key = (await create_key(server, name="scoped", models=["mock"]))["key"]
    client = _client(server, key)
    bad = _lines(2) + b"{not json\n"
    with pytest.raises(openai.BadRequestError) as e:
        await client.files.create(file=("in.jsonl", io.BytesIO(bad)), purpose="batch")
    assert "line 3" in e.value.message
    dup = _lines(2) + _lines(1)
    with pytest.raises(openai.BadRequestError) as e:
        await client.files.create(file=("in.jsonl", io.BytesIO(dup)), purpose="batch")
    assert "line 3" in e.value.message and "duplicate" in e.value.message
    with pytest.raises(openai.BadRequestError):
        await client.files.create(file=("in.jsonl", io.BytesIO(_lines(1))), purpose="fine-tune")
    # line 3 asks for a model this key may not use: the batch fails and no line runs
    mixed = _lines(2) + b"".join(orjson.dumps({"custom_id": "x", "method": "POST", "url": "/v1/chat/completions",
                                               "body": {"model": "other", "messages": []}}) for _ in [0]) + b"\n"
    f = await client.files.create(file=("in.jsonl", io.BytesIO(mixed)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    done = await _until_done(client, b.id)
    assert done.status == "failed" and done.failed_at and done.errors is not None
    [err] = done.errors.data
    assert err.line == 3 and err.code in ("model_not_found", "model_not_allowed") and "line 3" in err.message
    _, ev, _ = await request(str(server.make_url("")), "GET", "/v1/usage")
    assert ev["data"] == []
    # scoped to the key: another key sees neither the file nor the batch
    other = _client(server, (await create_key(server, name="other"))["key"])
    with pytest.raises(openai.NotFoundError):
        await other.batches.retrieve(b.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.retrieve(f.id)
    with pytest.raises(openai.NotFoundError):
        await other.files.content(f.id)
    assert (await other.batches.list()).data == []
    with pytest.raises(openai.BadRequestError):
        await client.batches.create(input_file_id=f.id, endpoint="/v1/completions", completion_window="24h")


async def test_cancel_a_running_batch(start_proxy, tmp_path):
    cfg = _config(f"sqlite:///{tmp_path}/l.db", providers={"local": {"type": "mock", "first_token_delay_ms": 50}},
                  jobs={"concurrency": 2})
    client = _client(await start_proxy(cfg))
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(40))), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(200):
        cur = await client.batches.retrieve(b.id)
        if cur.status == "in_progress" and cur.request_counts.completed > 0:
            break
        await asyncio.sleep(0.02)
    c = await client.batches.cancel(b.id)
    assert c.status == "cancelling" and c.cancelling_at
    done = await _until_done(client, b.id)
    assert done.status == "cancelled" and done.cancelled_at
    assert 0 < done.request_counts.completed < 40
    rows = (await client.files.content(done.output_file_id)).content.splitlines()
    assert len(rows) == done.request_counts.completed
    await client.files.delete(f.id)
    with pytest.raises(openai.NotFoundError):
        await client.files.retrieve(f.id)


async def test_batch_takes_only_its_share_of_a_rate_limit_and_waits_instead_of_failing(start_proxy, tmp_path):
    cfg = _config(f"sqlite:///{tmp_path}/l.db", limits={"global": {"rpm": 4}},
                  batches={"rate_limit_pause": 0.05}, jobs={"batch_share": 0.5})
    server = await start_proxy(cfg)
    client = _client(server)
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(6))), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(100):
        cur = await client.batches.retrieve(b.id)
        if cur.request_counts.completed == 2:
            break
        await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)                          # the other lines wait for the limit, none fails
    cur = await client.batches.retrieve(b.id)
    assert cur.status == "in_progress" and (cur.request_counts.completed, cur.request_counts.failed) == (2, 0)
    live = [(await client.chat.completions.create(model="mock", messages=[{"role": "user", "content": "x"}]))
            for _ in range(2)]                        # live calls keep the other half of the limit
    assert all(r.object == "chat.completion" for r in live)
    await client.batches.cancel(b.id)
    done = await _until_done(client, b.id)
    assert done.status == "cancelled" and done.request_counts.failed == 0


async def test_a_budget_that_runs_out_pauses_the_batch(start_proxy, tmp_path):
    from tests.cost_helpers import PER_CALL_NANOS, priced_config
    cfg = priced_config(f"sqlite:///{tmp_path}/l.db", jobs={"poll_interval": 0.02},
                        batches={"progress_interval": 0.05, "budget_pause": 0.1}, budgets={"cache_ttl": 0.05})
    server = await start_proxy(cfg)
    url = str(server.make_url(""))
    st, _, _ = await request(url, "POST", "/admin/budgets", {"id": "b", "amount_usd": 3 * PER_CALL_NANOS / 1e9,
                                                            "period": "total"})
    assert st == 200
    client = _client(server, (await create_key(server, name="k", budget_id="b"))["key"])
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(6, max_tokens=16))), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    for _ in range(200):
        cur = await client.batches.retrieve(b.id)
        if (cur.model_extra or {}).get("pause_reason") and cur.request_counts.completed == 3:
            break
        await asyncio.sleep(0.02)
    assert cur.status == "in_progress" and cur.request_counts.failed == 0 and cur.request_counts.completed == 3
    assert cur.model_extra["pause_reason"].startswith("budget_exhausted")
    st, _, _ = await request(url, "PATCH", "/admin/budgets/b", {"amount_usd": 1})
    assert st == 200
    done = await _until_done(client, b.id)
    assert done.status == "completed" and done.request_counts.completed == 6 and done.request_counts.failed == 0


async def test_embeddings_batch_and_lines_ordered_by_priority(start_proxy, fake_openai, tmp_path):
    cfg = _config(f"sqlite:///{tmp_path}/l.db", providers={"up": openai_provider(fake_openai)},
                  models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}],
                  jobs={"concurrency": 1, "batch_share": 1.0})
    client = _client(await start_proxy(cfg))
    emb = b"".join(orjson.dumps({"custom_id": f"e{i}", "method": "POST", "url": "/v1/embeddings",
                                 "body": {"model": "gpt", "input": f"text {i}"}}) + b"\n" for i in range(3))
    f = await client.files.create(file=("e.jsonl", io.BytesIO(emb)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/embeddings", completion_window="24h")
    done = await _until_done(client, b.id)
    assert done.status == "completed" and done.request_counts.completed == 3
    rows = [orjson.loads(x) for x in (await client.files.content(done.output_file_id)).content.splitlines()]
    assert [r["custom_id"] for r in rows] == ["e0", "e1", "e2"]
    assert rows[0]["response"]["body"]["data"][0]["object"] == "embedding"
    # one worker slot: lines run by metadata.priority (highest first), then in file order
    fake_openai.requests.clear()
    lines = b"".join(orjson.dumps({"custom_id": f"p{i}", "method": "POST", "url": "/v1/chat/completions",
                                   "body": {"model": "gpt", "messages": [{"role": "user", "content": f"p{i}"}],
                                            "metadata": {"priority": pr}}}) + b"\n"
                     for i, pr in enumerate([0, 5, 1, 5]))
    f = await client.files.create(file=("p.jsonl", io.BytesIO(lines)), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (await _until_done(client, b.id)).status == "completed"
    assert [r["messages"][0]["content"] for r in fake_openai.requests] == ["p1", "p3", "p2", "p0"]


async def test_batch_discount_applies_to_batch_lines_only(start_proxy, tmp_path):
    from tests.cost_helpers import PER_CALL_NANOS, priced_config
    cfg = priced_config(f"sqlite:///{tmp_path}/l.db", jobs={"poll_interval": 0.02},
                        batches={"progress_interval": 0.05, "discount": {"mock": 0.5}})
    server = await start_proxy(cfg)
    url = str(server.make_url(""))
    client = _client(server)
    f = await client.files.create(file=("in.jsonl", io.BytesIO(_lines(2, max_tokens=16))), purpose="batch")
    b = await client.batches.create(input_file_id=f.id, endpoint="/v1/chat/completions", completion_window="24h")
    assert (await _until_done(client, b.id)).status == "completed"
    await request(url, "POST", "/v1/chat/completions", {"model": "mock", "max_tokens": 16,
                                                        "messages": [{"role": "user", "content": "live"}]})
    _, ev, _ = await request(url, "GET", "/v1/usage")
    costs = sorted((e["metadata"]["batch_id"] is not None, round(e["cost"] * 1e9)) for e in ev["data"])
    assert costs == [(False, PER_CALL_NANOS), (True, PER_CALL_NANOS // 2), (True, PER_CALL_NANOS // 2)]


async def test_file_size_is_capped_by_batches_max_file_bytes_not_the_body_limit(start_proxy, tmp_path):
    cfg = _config(f"sqlite:///{tmp_path}/l.db", server={"max_body_bytes": 100_000},
                  batches={"max_file_bytes": 300_000})
    client = _client(await start_proxy(cfg))
    line = {"custom_id": "", "method": "POST", "url": "/v1/chat/completions",
            "body": {"model": "mock", "messages": [{"role": "user", "content": "y" * 1000}]}}
    data = b"".join(orjson.dumps({**line, "custom_id": f"x{i}"}) + b"\n" for i in range(200))   # ~220 KB
    f = await client.files.create(file=("in.jsonl", io.BytesIO(data)), purpose="batch")
    assert f.bytes == len(data)
    with pytest.raises(openai.APIStatusError) as e:
        await client.files.create(file=("in.jsonl", io.BytesIO(data * 2)), purpose="batch")
    assert e.value.status_code == 413
