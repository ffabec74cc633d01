"""`make run` as the README describes it: the Makefile's own serve command starts, prints a dev key as an
export line (and keeps it where the README reads it), and the README's quick-start blocks, run as printed
in a fresh shell, work against it."""

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


def quick_start_script(port: int) -> str:
    """The README's quick-start blocks after `make run` as one bash script: bash blocks as they are, Python
    blocks through the interpreter running the tests; the documented port swapped for the test's."""
    text = (ROOT / "README.md").read_text()
    start = text.index("## Quick start")
    section = text[start:text.index("\n## ", start + 1)]
    parts = []
    for lang, code in re.findall(r"```(bash|python)\n(.*?)```", section, re.S):
        if lang == "bash" and "make " in code:
            continue                      # `make run` itself is what the test starts
        parts.append(code if lang == "bash" else f'"$PYTHON" - <<\'PY\'\n{code}PY\n')
    return "\n".join(parts).replace("127.0.0.1:8080", f"127.0.0.1:{port}")


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
            m = re.search(r"^    export LLM_SERVICE_MASTER_KEY=(sk-dev-[A-Za-z0-9_-]+)$", line)
            if m:
                key = m.group(1)
            if "listening on" in line:
                break
        assert key, "no export line with the dev key printed"
        body = {"model": "mock", "stream": True, "messages": [{"role": "user", "content": "Hello"}]}
        async with aiohttp.ClientSession() as s:
            async with s.post(f"http://127.0.0.1:{port}/v1/chat/completions", data=orjson.dumps(body),
                              headers={"Authorization": f"Bearer {key}"}) as r:
                raw = await r.read()
            assert r.status == 200 and raw.endswith(b"data: [DONE]\n\n")
            async with s.get(f"http://127.0.0.1:{port}/v1/models", headers={"Authorization": "Bearer wrong"}) as r:
                assert r.status == 401                     # never open, even in dev mode
        # The quick start, copied into a fresh shell (no key in its environment) in the repository's folder
        script = quick_start_script(port)
        assert "export LLM_SERVICE_MASTER_KEY=" in script and "sk-my-master" not in script
        run = await asyncio.to_thread(
            subprocess.run, ["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True,
            text=True, timeout=60, env={**env, "PYTHON": sys.executable, "PYTHONPATH": str(ROOT)})
        assert run.returncode == 0, run.stderr
        assert "data: [DONE]" in run.stdout and "ChatCompletion(" in run.stdout, run.stdout
        assert re.search(r"^\[-?0\.\d+, ", run.stdout, re.M), run.stdout        # the embedding printed
    finally:
        proc.terminate()
        proc.wait(10)


def test_readme_links_point_inside_the_repository():
    text = (ROOT / "README.md").read_text()
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text):
        if "://" in target or target.startswith("mailto:"):
            continue
        path = (ROOT / target).resolve()
        assert path.is_relative_to(ROOT.resolve()) and path.exists(), target
