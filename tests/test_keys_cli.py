"""`llm-service keys ...` against the same ledger a running proxy uses (SQLite file and PostgreSQL)."""

from __future__ import annotations

import asyncio
import time

import orjson

from proxy.cli import main
from proxy.config import load
from tests.conftest import MASTER
from tests.keys_helpers import call, chat, ledger_url  # noqa: F401

CONFIG = """
server: {{master_key: {master}}}
storage: {{database: "{db}", key_cache_ttl: 0.3}}
providers: {{local: {{type: mock}}}}
models:
  - {{name: a, targets: [{{provider: local, model: a}}]}}
  - {{name: b, targets: [{{provider: local, model: b}}]}}
"""


async def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(main, list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


async def test_cli_create_list_rotate_revoke_against_a_running_proxy(start_proxy, ledger_url, tmp_path,  # noqa: F811
                                                                     capsys):
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(CONFIG.format(master=MASTER, db=ledger_url))
    server = await start_proxy(load(cfg_file, env={}))
    code, out, err = await cli(capsys, "keys", "--config", str(cfg_file), "create", "--name", "cli-app",
                               "--models", "a", "--rpm", "600", "--source-type", "application",   # rpm enforced: room to poll
                               "--metadata", '{"owner": "ops"}')
    assert code == 0, err
    created = orjson.loads(out)
    assert created["rpm"] == 600 and created["models"] == ["a"] and created["metadata"] == {"owner": "ops"}
    assert "shown only once" in err
    secret = created["key"]
    assert (await chat(server, secret, "a"))[0] == 200            # the proxy sees the CLI's key
    assert (await chat(server, secret, "b"))[0] == 403

    code, out, _ = await cli(capsys, "keys", "list", "--config", str(cfg_file))
    assert code == 0 and created["id"] in out and "active" in out and secret not in out

    code, out, _ = await cli(capsys, "keys", "rotate", created["id"], "--config", str(cfg_file))
    new_secret = orjson.loads(out)["key"]
    t0 = time.monotonic()
    while (await chat(server, secret))[0] != 401:
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.05)
    assert (await chat(server, new_secret))[0] == 200

    code, out, _ = await cli(capsys, "keys", "revoke", created["id"], "--config", str(cfg_file))
    assert code == 0 and "revoked" in out
    t0 = time.monotonic()
    while (await chat(server, new_secret))[0] != 401:
        assert time.monotonic() - t0 < 1.0
        await asyncio.sleep(0.05)

    _, audit = await call(server, "GET", f"/admin/audit?target={created['id']}&limit=50")
    assert all(e["target"] == created["id"] for e in audit["data"])
    cli_events = [e for e in audit["data"] if e["actor"].startswith("cli")]
    assert {e["action"] for e in cli_events} >= {"key.create", "key.rotate", "key.revoke"}
    assert all(e["ip"] == "local" for e in cli_events)

    code, _, err = await cli(capsys, "keys", "revoke", "key_missing", "--config", str(cfg_file))
    assert code == 2 and "No API key" in err
    code, _, err = await cli(capsys, "keys", "create", "--rpm", "0", "--config", str(cfg_file))
    assert code == 2 and "rpm" in err
