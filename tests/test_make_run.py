"""`make run` as the README describes it: the Makefile's own serve command starts, prints a dev key once,
and that key streams from the mock model."""

from __future__ import annotations

import asyncio
import os
import re
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import aiohttp
import orjson

ROOT = Path(__file__).parent.parent


def _serve_args() -> list[str]:
    recipe = re.search(r"^run:.*\n\t(.*)$", (ROOT / "Makefile").read_text(), re.M)
    assert recipe, "Makefile has no run recipe"
    words = shlex.split(recipe.group(1).replace("$(CONFIG)", "config.yaml"))
    assert words[0].endswith("llm-service")
    return words[1:]


async def test_make_run_command_serves_and_streams_with_the_printed_dev_key(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if k != "LLM_SERVICE_MASTER_KEY"}
    # config.yaml is resolved from the working directory, as `make run` does from the repo root
    (tmp_path / "config.yaml").write_text((ROOT / "config.yaml").read_text())
    proc = subprocess.Popen([sys.executable, "-m", "proxy", *_serve_args(), "--port", str(port)], cwd=tmp_path,
                            env={**env, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        assert proc.stdout is not None
        key = None
        for _ in range(40):
            line = (await asyncio.to_thread(proc.stdout.readline)).decode()
            m = re.search(r"(sk-dev-[A-Za-z0-9_-]+)", line)
            if m:
                key = m.group(1)
            if "listening on" in line:
                break
        assert key, "no dev key printed"
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=orjson.dumps(body),
                              headers={"Authorization": f"Bearer {key}"}) as r:
                raw = await r.read()
            assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
            async with s.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401                     # never open, even in dev mode
    finally:
        proc.terminate()
        proc.wait(10)
