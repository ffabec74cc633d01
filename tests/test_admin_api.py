"""The admin API: master key only, validation in OpenAI's envelope, pagination, and the audit log."""

from __future__ import annotations

import asyncio
import time

import pytest

from proxy.audit import AuditLog
from proxy.store import AuditQuery, open_ledger
from tests.conftest import MASTER
from tests.keys_helpers import call, chat, create_key, key_config, ledger_url  # noqa: F401


async def test_admin_needs_the_master_key(start_proxy, tmp_path):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    virtual = (await create_key(server))["key"]
    for method, path in (("GET", "/admin/keys"), ("POST", "/admin/keys"), ("GET", "/admin/audit"),
                         ("DELETE", "/admin/keys/key_x")):
        status, body = await call(server, method, path, {} if method == "POST" else None,
                                  {"Authorization": f"Bearer {virtual}"})
        assert status == 403 and body["error"]["type"] == "permission_error", (path, body)
        status, body = await call(server, method, path, None, {})
        assert status == 401 and body["error"]["code"] == "invalid_api_key"


async def test_create_fields_and_crud(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    body = {"name": "svc", "models": ["a", "gpt-*"], "rpm": 60, "tpm": 100000, "max_concurrency": 4,
            "budget_id": "bud_1", "source_id": "billing", "source_type": "service",
            "expires_at": "2099-01-01T00:00:00Z", "metadata": {"team": "payments"}}
    created = await create_key(server, **body)
    for k, v in body.items():
        if k != "expires_at":
            assert created[k] == v, k
    assert created["expires_at"] == 4070908800
    kid = created["id"]
    status, got = await call(server, "GET", f"/admin/keys/{kid}")
    assert status == 200 and "key" not in got and got["key_prefix"] == created["key"][:11]
    status, got = await call(server, "PATCH", f"/admin/keys/{kid}", {"rpm": None, "models": None, "name": "svc2"})
    assert status == 200 and got["rpm"] is None and got["models"] is None and got["name"] == "svc2"
    assert (await chat(server, created["key"], "b"))[0] == 200       # no list any more: every model
    status, got = await call(server, "DELETE", f"/admin/keys/{kid}")
    assert got == {"id": kid, "object": "api_key.deleted", "deleted": True}
    status, got = await call(server, "GET", f"/admin/keys/{kid}")
    assert got["revoked"] is True
    status, got = await call(server, "PATCH", f"/admin/keys/{kid}", {"name": "x"})
    assert status == 400
    status, got = await call(server, "GET", "/admin/keys/key_missing")
    assert status == 404 and got["error"]["param"] == "id"


@pytest.mark.parametrize("body,param", [
    ({"nmae": "typo"}, "nmae"),
    ({"models": "a"}, "models"),
    ({"models": [1]}, "models"),
    ({"rpm": 0}, "rpm"),
    ({"tpm": "100"}, "tpm"),
    ({"max_concurrency": True}, "max_concurrency"),
    ({"source_type": "robot"}, "source_type"),
    ({"expires_at": "next tuesday"}, "expires_at"),
    ({"metadata": [1]}, "metadata"),
    ({"disabled": True}, "disabled"),              # not a create field
])
async def test_validation_errors_name_the_param(start_proxy, tmp_path, body, param):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    status, got = await call(server, "POST", "/admin/keys", body)
    assert status == 400, got
    assert set(got["error"]) == {"message", "type", "param", "code"}
    assert got["error"]["param"] == param and got["error"]["type"] == "invalid_request_error"


async def test_bad_json_limit_and_grace(start_proxy, tmp_path):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    async with __import__("aiohttp").ClientSession() as s:
        async with s.post(server.make_url("/admin/keys"), data=b"{nope",
                          headers={"Authorization": f"Bearer {MASTER}"}) as r:
            assert r.status == 400
    assert (await call(server, "GET", "/admin/keys?limit=0"))[1]["error"]["param"] == "limit"
    kid = (await create_key(server))["id"]
    status, got = await call(server, "POST", f"/admin/keys/{kid}/rotate", {"grace_period": -1})
    assert status == 400 and got["error"]["param"] == "grace_period"
    status, got = await call(server, "POST", f"/admin/keys/{kid}/rotate", {"grace": 1})
    assert status == 400 and got["error"]["param"] == "grace"


async def test_key_list_pagination(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    ids = [(await create_key(server, name=f"k{i}"))["id"] for i in range(5)]
    seen, after = [], None
    while True:
        status, page = await call(server, "GET", "/admin/keys?limit=2" + (f"&after={after}" if after else ""))
        assert status == 200 and page["object"] == "list"
        assert all("key" not in k for k in page["data"])
        seen += [k["id"] for k in page["data"]]
        assert page["first_id"] == page["data"][0]["id"] and page["last_id"] == page["data"][-1]["id"]
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert seen == ids


async def test_audit_log_records_admin_actions_and_auth_failures(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(key_config(ledger_url))
    t0 = time.time() - 1
    created = await create_key(server, name="audited")
    kid = created["id"]
    await call(server, "PATCH", f"/admin/keys/{kid}", {"rpm": 5})
    rotated = (await call(server, "POST", f"/admin/keys/{kid}/rotate"))[1]["key"]
    await call(server, "DELETE", f"/admin/keys/{kid}")
    await chat(server, "sk-llm-doesnotexist0000000000000000000000000")
    await call(server, "GET", "/admin/keys", None, {"Authorization": f"Bearer {rotated}"})   # 401 now
    status, page = await call(server, "GET", f"/admin/audit?since={t0}&limit=100")
    assert status == 200
    actions = [e["action"] for e in page["data"]]
    for a in ("key.create", "key.update", "key.rotate", "key.revoke", "auth.failure"):
        assert a in actions, (a, actions)
    ev = next(e for e in page["data"] if e["action"] == "key.create")
    assert ev["actor"] == "master" and ev["target"] == kid and ev["ip"] == "127.0.0.1" and ev["ts"] >= t0
    fails = {e["detail"]["path"]: e for e in page["data"] if e["action"] == "auth.failure"}
    assert fails["/v1/chat/completions"]["detail"]["key_prefix"] == "sk-llm-does"
    assert fails["/admin/keys"]["detail"]["reason"] == "This API key has been revoked."
    assert fails["/admin/keys"]["ip"] == "127.0.0.1"
    status, only = await call(server, "GET", "/admin/audit?action=key.rotate")
    assert [e["action"] for e in only["data"]] == ["key.rotate"]
    status, mine = await call(server, "GET", "/admin/audit?actor=master&limit=2")
    assert len(mine["data"]) == 2 and mine["has_more"] is True
    status, nxt = await call(server, "GET", f"/admin/audit?actor=master&limit=2&after={mine['last_id']}")
    assert nxt["data"][0]["id"] < mine["data"][-1]["id"]
    status, none = await call(server, "GET", "/admin/audit?until=2000-01-01T00:00:00")
    assert none["data"] == []


async def test_virtual_key_on_admin_is_audited_with_its_id(start_proxy, tmp_path):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    created = await create_key(server)
    await call(server, "GET", "/admin/keys", None, {"api-key": created["key"]})
    _, page = await call(server, "GET", "/admin/audit?action=auth.forbidden")
    assert page["data"][0]["actor"] == created["id"]


async def test_auth_failures_are_batched_and_dropped_when_full(tmp_path):
    led = open_ledger(f"sqlite:///{tmp_path}/l.db")
    await led.connect()
    audit = AuditLog(led, max_queue=5, batch=2, interval=0.05)
    try:
        for i in range(8):
            audit.enqueue("auth.failure", "anonymous", detail={"i": i})     # no await: never blocks
        assert audit.dropped == 3
        assert await led.list_audit(AuditQuery()) == []                      # nothing written inline
        audit.start()
        for _ in range(50):
            if audit.written == 5:
                break
            await asyncio.sleep(0.02)
        assert sorted(e.detail["i"] for e in await led.list_audit(AuditQuery())) == [0, 1, 2, 3, 4]
    finally:
        await audit.close()
        await led.close()


async def test_ready_reports_storage(start_proxy, tmp_path):
    server = await start_proxy(key_config(f"sqlite:///{tmp_path}/l.db"))
    status, body = await call(server, "GET", "/ready", None, {})
    assert status == 200 and body["checks"]["storage"] is True
    await server.app[__import__("proxy.gateway").gateway.GATEWAY].keys.ledger.close()
    status, body = await call(server, "GET", "/ready", None, {})
    assert status == 503 and body["checks"]["storage"] is False
