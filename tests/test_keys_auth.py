"""Virtual keys end to end over real HTTP, on SQLite and PostgreSQL: SDK use, header styles, model lists
(fallbacks included), revoke/expire/disable within 1 s, rotation, and no secret anywhere at rest or in logs."""

from __future__ import annotations

import asyncio
import logging
import time

import openai
import pytest

from tests.keys_helpers import call, chat, create_key, key_config, ledger_url, pg_url  # noqa: F401


async def test_created_key_works_with_the_openai_sdk_and_all_header_styles(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    created = await create_key(server, name="app", models=["a"], source_type="application", source_id="app-1")
    secret = created["key"]
    assert secret.startswith("sk-llm-") and len(secret) >= 40
    assert created["key_prefix"] == secret[:11] and created["id"].startswith("key_")
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=secret, max_retries=0)
    resp = await client.chat.completions.create(model="a", messages=[{"role": "user", "content": "hi"}])
    assert resp.choices[0].message.content
    for header in ("authorization", "x-api-key", "api-key"):       # OpenAI, Anthropic, Azure SDK styles
        status, body = await chat(server, secret, header=header)
        assert status == 200, (header, body)
    status, body = await chat(server, secret + "x", header="x-api-key")
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_keys_are_scoped_by_public_model_names(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    only_a = (await create_key(server, models=["a"]))["key"]
    assert (await chat(server, only_a, "a"))[0] == 200
    status, body = await chat(server, only_a, "b")
    assert status == 403 and body["error"]["type"] == "permission_error" and body["error"]["param"] == "model"
    # the public name is enough whatever the upstream ids of its targets (a dated id; a target serving `b`)
    public = (await create_key(server, models=["gpt-4o-mini", "a_fb"]))["key"]
    assert (await chat(server, public, "gpt-4o-mini"))[0] == 200
    assert (await chat(server, public, "a_fb"))[0] == 200          # first target dead, second answers
    # a fallback to another public model needs that model too: without it the fallback is not tried
    no_b = (await create_key(server, models=["c_fb"]))["key"]
    status, body = await chat(server, no_b, "c_fb")
    assert status == 502 and body["error"]["type"] == "upstream_error", body
    with_b = (await create_key(server, models=["c_fb", "b"]))["key"]
    assert (await chat(server, with_b, "c_fb"))[0] == 200
    unrestricted = (await create_key(server))["key"]
    assert (await chat(server, unrestricted, "b"))[0] == 200


async def test_v1_models_lists_only_allowed_models_with_globs(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    key = (await create_key(server, models=["gpt-4o*", "a"]))["key"]
    client = openai.AsyncOpenAI(base_url=str(server.make_url("/v1")), api_key=key, max_retries=0)
    names = sorted(m.id for m in (await client.models.list()).data)
    assert names == ["a", "gpt-4o", "gpt-4o-mini"]          # exactly what the key may call
    with pytest.raises(openai.NotFoundError):
        await client.models.retrieve("b")
    assert (await chat(server, key, "gpt-4o-mini"))[0] == 200


async def _rejected_within(server, secret: str, seconds: float = 1.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        status, _ = await chat(server, secret)
        if status == 401:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise AssertionError(f"key still accepted after {seconds}s")


@pytest.mark.parametrize("how", ["revoke", "disable", "expire"])
async def test_revoked_disabled_or_expired_key_gets_401_within_1s(start_proxy, ledger_url, how):  # noqa: F811
    server = await start_proxy(key_config(ledger_url, storage={"key_cache_ttl": 0.5}))
    created = await create_key(server, models=["a"])
    secret, kid = created["key"], created["id"]
    assert (await chat(server, secret))[0] == 200            # now cached
    if how == "revoke":
        assert (await call(server, "DELETE", f"/admin/keys/{kid}"))[1]["deleted"] is True
    elif how == "disable":
        assert (await call(server, "PATCH", f"/admin/keys/{kid}", {"disabled": True}))[1]["disabled"] is True
    else:
        assert (await call(server, "PATCH", f"/admin/keys/{kid}", {"expires_at": time.time() - 1}))[0] == 200
    assert await _rejected_within(server, secret) < 1.0
    status, body = await chat(server, secret)
    assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_expiry_applies_even_while_cached(start_proxy, tmp_path):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db", storage={"key_cache_ttl": 30}))
    secret = (await create_key(server, expires_at=time.time() + 0.6))["key"]
    assert (await chat(server, secret))[0] == 200
    await asyncio.sleep(0.7)
    status, body = await chat(server, secret)
    assert status == 401 and "expired" in body["error"]["message"]


async def test_rotate_with_grace_period_then_old_secret_stops(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    created = await create_key(server, name="r")
    old = created["key"]
    status, rotated = await call(server, "POST", f"/admin/keys/{created['id']}/rotate", {"grace_period": 0.8})
    assert status == 200 and rotated["key"] != old and rotated["id"] == created["id"]
    assert (await chat(server, rotated["key"]))[0] == 200
    assert (await chat(server, old))[0] == 200               # still inside the grace period
    await asyncio.sleep(1.1)
    assert (await chat(server, old))[0] == 401
    status, again = await call(server, "POST", f"/admin/keys/{created['id']}/rotate")   # no grace: at once
    assert status == 200
    assert (await chat(server, rotated["key"]))[0] == 401
    assert (await chat(server, again["key"]))[0] == 200


async def test_secret_is_nowhere_in_the_database_or_logs(start_proxy, tmp_path, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    db = tmp_path / "ledger.db"
    server = await start_proxy(key_config(f"sqlite:///{db}"))
    created = await create_key(server, name="secretive", models=["a"])
    secret, kid = created["key"], created["id"]
    assert (await chat(server, secret))[0] == 200
    assert (await chat(server, secret, "b"))[0] == 403
    rotated = (await call(server, "POST", f"/admin/keys/{kid}/rotate", {"grace_period": 60}))[1]["key"]
    await call(server, "DELETE", f"/admin/keys/{kid}")
    await asyncio.sleep(0.3)
    assert (await chat(server, secret))[0] == 401             # an auth failure with the real secret
    assert (await call(server, "GET", "/admin/audit?action=auth.failure"))[1]["data"]   # flushed to the DB
    await server.close()                                      # checkpoint, close: everything is on disk
    out = capsys.readouterr()
    logs = caplog.text + out.out + out.err
    for s in (secret, rotated):
        needle = s.encode()
        for f in tmp_path.iterdir():                          # the DB file and any -wal / -shm left over
            if f.name.startswith("ledger.db"):
                assert needle not in f.read_bytes(), f.name
        assert s not in logs
        assert s[11:] not in logs                             # not even the part after the display prefix


async def test_secret_is_not_stored_in_postgres(start_proxy, pg_url):  # noqa: F811
    server = await start_proxy(key_config(pg_url))
    created = await create_key(server, name="pg")
    await chat(server, created["key"] + "nope")
    await call(server, "GET", "/admin/audit")
    from proxy.store import open_ledger
    led = open_ledger(pg_url)
    await led.connect()
    try:
        tables = [r[0] for r in await led.fetch(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = current_schema()")]
        assert {"api_keys", "audit_log", "schema_version"} <= set(tables)
        for t in tables:
            for row in await led.fetch(f"SELECT CAST(t.* AS TEXT) FROM {t} AS t"):
                assert created["key"][11:] not in row[0], t
    finally:
        await led.close()


async def test_real_anthropic_and_azure_sdks_authenticate_with_their_header_styles(start_proxy, tmp_path):
    import anthropic
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    secret = (await create_key(server, models=["a"]))["key"]
    ant = anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key=secret, max_retries=0)
    page = await ant.models.list()                               # GET /v1/models with x-api-key
    assert [m.id for m in page.data] == ["a"]
    azure = openai.AsyncAzureOpenAI(base_url=str(server.make_url("/v1")), api_key=secret,
                                    api_version="2024-10-21", max_retries=0)
    assert [m.id for m in (await azure.models.list()).data] == ["a"]    # api-key header
    with pytest.raises(anthropic.AuthenticationError):
        await anthropic.AsyncAnthropic(base_url=str(server.make_url("")), api_key=secret + "x",
                                       max_retries=0).models.list()
