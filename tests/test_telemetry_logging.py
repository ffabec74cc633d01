"""Logs: one JSON access line per request, parsed back; secrets masked wherever they appear."""

from __future__ import annotations

import io
import logging

import aiohttp
import openai
import orjson
import pytest

from proxy.telemetry.logging import redact, setup_logging
from tests.conftest import MASTER, make_config, openai_provider


@pytest.fixture
def log_lines():
    """Route the root logger to a buffer in our JSON format; restore the previous handlers after."""
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    setup_logging("info", "json", stream=buf)

    def lines() -> list[dict]:
        return [orjson.loads(line) for line in buf.getvalue().splitlines() if line.strip()]

    lines.raw = buf                    # type: ignore[attr-defined]
    yield lines
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in saved:
        root.addHandler(h)
    root.setLevel(level)


async def test_access_line_per_request_as_json(start_proxy, fake_openai, log_lines):
    server = await start_proxy(make_config(
        providers={"up": openai_provider(fake_openai)},
        models=[{"name": "gpt", "targets": [{"provider": "up", "model": "gpt-4o-mini"}]}]))
    c = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=MASTER, max_retries=0)
    raw = await c.chat.completions.with_raw_response.create(
        model="gpt", messages=[{"role": "user", "content": "the secret plan"}])
    rid = raw.headers["x-request-id"]
    stream = await c.chat.completions.create(model="gpt", stream=True, messages=[{"role": "user", "content": "x"}])
    async for _ in stream:
        pass
    async with aiohttp.ClientSession() as s, s.post(
            server.make_url("/v1/chat/completions"), json={"model": "gpt", "messages": [{"role": "user",
                                                                                     "content": "x"}]},
            headers={"Authorization": "Bearer sk-client-wrong-key-999"}) as r:
        assert r.status == 401

    access = [rec for rec in log_lines() if rec["logger"] == "proxy.access"]
    assert len(access) == 3
    first = next(rec for rec in access if rec["request_id"] == rid)
    assert first["level"] == "info" and first["ts"].endswith("Z")
    assert (first["model"], first["provider"], first["upstream_model"]) == ("gpt", "up", "gpt-4o-mini")
    assert first["status"] == 200 and first["key_id"] == "master"
    assert first["prompt_tokens"] == 11 and first["completion_tokens"] == len(fake_openai.reply.split())
    assert first["latency_ms"] > 0 and first["ttft_ms"] is None and first["stream"] is False
    assert "cost" in first and "cache" in first and first["error"] is None
    streamed = next(rec for rec in access if rec["stream"])
    assert streamed["ttft_ms"] is not None and 0 < streamed["ttft_ms"] <= streamed["latency_ms"]
    denied = next(rec for rec in access if rec["status"] == 401)
    assert denied["error_code"] == "invalid_api_key" and denied["key_id"] is None
    text = log_lines.raw.getvalue()
    for secret in (MASTER, "sk-client-wrong-key-999", "sk-upstream-secret", "the secret plan"):
        assert secret not in text


def test_any_log_line_is_redacted(log_lines):
    log = logging.getLogger("proxy.test")
    log.warning("upstream said: Authorization: Bearer abc.def-123 for key sk-live-0123456789abcdef")
    log.error("config %s", {"api_key": "AKIAABCDEFGHIJKLMNOP", "password": "hunter2!"})
    try:
        raise ValueError("token=tok_9f8e7d6c5b")
    except ValueError:
        log.exception("failed with x-api-key: sk-ant-abcdef123456")
    text = log_lines.raw.getvalue()
    for secret in ("abc.def-123", "sk-live-0123456789abcdef", "AKIAABCDEFGHIJKLMNOP", "hunter2!",
                   "tok_9f8e7d6c5b", "sk-ant-abcdef123456"):
        assert secret not in text, secret
    recs = log_lines()
    assert len(recs) == 3 and "Bearer ***" in recs[0]["msg"] and "exc" in recs[2]


def test_redact_keeps_ordinary_text():
    assert redact("prompt_tokens=5 total_tokens: 7 model=gpt-4o") == "prompt_tokens=5 total_tokens: 7 model=gpt-4o"
    assert redact('{"authorization":"Bearer sk-x1234567"}') == '{"authorization":"Bearer ***"}'


def test_level_and_text_format():
    root = logging.getLogger()
    saved, level = list(root.handlers), root.level
    buf = io.StringIO()
    try:
        setup_logging("warning", "text", stream=buf)
        logging.getLogger("proxy.x").info("hidden")
        logging.getLogger("proxy.x").warning("shown sk-abcdef123456")
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
        for h in saved:
            root.addHandler(h)
        root.setLevel(level)
    out = buf.getvalue()
    assert "hidden" not in out and "shown ***" in out and not out.startswith("{")


def test_batched_handler_writes_many_lines_at_once_and_warnings_at_once():
    from proxy.telemetry.logging import BatchedHandler, JsonFormatter

    class Counting(io.StringIO):
        writes = 0

        def write(self, s: str) -> int:
            Counting.writes += 1
            return super().write(s)

    out = Counting()
    h = BatchedHandler(out)
    h.setFormatter(JsonFormatter())
    log = logging.getLogger("proxy.access")
    record = lambda lvl, msg, **f: log.makeRecord(log.name, lvl, __file__, 1, msg, None, None,  # noqa: E731
                                                  extra={"fields": f})
    for i in range(50):
        h.handle(record(logging.INFO, "request", request_id=f"r{i}", error=None, model="sk-abcdefghijklmnopqrstuvwxyz1234"))
    assert out.getvalue() == "" and Counting.writes == 0
    h.handle(record(logging.WARNING, "slow"))             # a warning goes out at once, with what waited
    lines = [orjson.loads(x) for x in out.getvalue().splitlines()]
    assert len(lines) == 51 and Counting.writes == 1
    assert "sk-abcdefghijklmnopqrstuvwxyz1234" not in out.getvalue()   # free-text fields still masked
    h.handle(record(logging.INFO, "request", request_id="last"))
    h.flush()
    assert orjson.loads(out.getvalue().splitlines()[-1])["request_id"] == "last"
