"""`llm-service serve` tells the truth at start: the port it bound, the ledger file it opened, providers
without a key; and a busy port is one line and exit 1, not a traceback and a hang."""

from __future__ import annotations

import asyncio
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).parent.parent


def _env(**extra: str) -> dict[str, str]:
    drop = {"LLM_SERVICE_MASTER_KEY", "OPENAI_API_KEY"}
    return {**{k: v for k, v in os.environ.items() if k not in drop}, "PYTHONPATH": str(ROOT), **extra}


async def _lines_until(proc: subprocess.Popen, marker: str, limit: int = 60) -> list[str]:
    assert proc.stdout is not None
    lines: list[str] = []
    for _ in range(limit):
        line = (await asyncio.to_thread(proc.stdout.readline)).decode()
        if not line:
            break
        lines.append(line.rstrip("\n"))
        if marker in line:
            return lines
    raise AssertionError(f"no {marker!r} in {lines}")


async def test_port_zero_ledger_path_key_warning_and_dev_key_file(tmp_path):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "config.yaml").write_text((ROOT / "config.yaml").read_text())     # OPENAI_API_KEY left unset
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", "../conf/config.yaml", "--port", "0"],
                            cwd=elsewhere, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        lines = await _lines_until(proc, "listening on")
        text = "\n".join(lines)
        warnings = [ln for ln in lines if "has no API key" in ln]
        assert len(warnings) == 1 and "provider 'openai'" in warnings[0] and "OPENAI_API_KEY" in warnings[0]
        ledger = conf.resolve() / "data" / "llm-service.db"
        assert f"ledger: {ledger}" in lines
        key = re.search(r"^    export LLM_SERVICE_MASTER_KEY=(sk-dev-\S+)$", text, re.M)
        assert key, text
        assert (conf / "data" / "dev-master-key").read_text().strip() == key.group(1)
        assert (conf / "data" / "dev-master-key").stat().st_mode & 0o077 == 0
        port = int(re.search(r"listening on http://127\.0\.0\.1:(\d+)$", lines[-1]).group(1))
        assert port != 0
        headers = {"Authorization": f"Bearer {key.group(1)}"}
        async with aiohttp.ClientSession() as s:
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}]}
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=orjson.dumps(body),
                              headers=headers) as r:
                err = (await r.json())["error"]
            assert r.status == 502 and err["code"] == "provider_key_missing" and "'openai'" in err["message"]
        assert ledger.exists() and not (elsewhere / "data").exists()
    finally:
        proc.terminate()
        proc.wait(10)


async def test_busy_port_is_one_line_and_exit_1(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
        r = await asyncio.to_thread(
            subprocess.run, [sys.executable, "-m", "proxy", "serve", "--port", str(port)], cwd=tmp_path,
            env=_env(LLM_SERVICE_MASTER_KEY="sk-fixed", OPENAI_API_KEY="sk-x"), capture_output=True, text=True,
            timeout=30)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stderr.strip().splitlines() == [f"port {port} is in use"]
    assert "Traceback" not in r.stdout
