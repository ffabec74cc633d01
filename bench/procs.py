"""What the benches share: free ports, the proxy and the fake upstream in their own processes (as
deployed: the figures then measure the proxy, not a load generator on its event loop), a lean client."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson

from proxy.config import parse

ROOT = Path(__file__).resolve().parent.parent
MASTER = "sk-bench-master"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_port(port: int, within: float = 15.0) -> None:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
            w.close()
            return
        except OSError:
            await asyncio.sleep(0.05)
    raise RuntimeError(f"nothing listened on port {port}")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a process (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.asynccontextmanager
async def server(module: str, *args: str) -> AsyncIterator[int]:
    """`python -m module PORT-ARGS...` in its own process; `{port}` in args is its port; yields the port."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", module, *(a.format(port=port) for a in args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await wait_port(port)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


def fake_upstream(chunks: int = 20) -> contextlib.AbstractAsyncContextManager[int]:
    """bench.fake_upstream (a zero-latency OpenAI upstream) in its own process; yields its port."""
    return server("bench.fake_upstream", "{port}", str(chunks))


class Proxy:
    def __init__(self, proc: subprocess.Popen[bytes], port: int, tmp: Path) -> None:
        self.proc, self.port, self.tmp = proc, port, tmp

    def url(self, path: str = "/v1/chat/completions") -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def stop(self) -> None:
        """SIGTERM, as an orchestrator stops it (graceful: drains, flushes the ledger)."""
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)


@contextlib.asynccontextmanager
async def proxy(raw: dict[str, Any]) -> AsyncIterator[Proxy]:
    """`llm-service serve` in its own process with config `raw` (its server.port is filled in); a ledger
    file in a temporary folder unless `raw` names one."""
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        port = free_port()
        raw = {**raw, "server": {"host": "127.0.0.1", "master_key": MASTER, "log_level": "warning",
                                 **raw.get("server", {}), "port": port},
               "storage": {"database": f"sqlite:///{tmp}/ledger.db", **raw.get("storage", {})}}
        parse(raw, env={})                                     # a bad config fails here, with its path
        path = Path(tmp) / "config.yaml"
        path.write_bytes(orjson.dumps(raw))                    # JSON is YAML
        proc = subprocess.Popen([sys.executable, "-m", "proxy", "serve", "--config", str(path)], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        p = Proxy(proc, port, Path(tmp))
        try:
            await wait_port(port)
            yield p
        finally:
            with contextlib.suppress(Exception):
                p.stop()
            if proc.poll() is None:
                proc.kill()


class LeanClient:
    """HTTP/1.1 keep-alive with prebuilt request bytes, so the figures measure the proxy rather than the
    client. `timed()` returns the seconds from sending to the last byte of the answer."""

    def __init__(self, port: int, path: str = "/v1/chat/completions") -> None:
        self.port, self.path = port, path
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> LeanClient:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.writer is not None
        self.writer.close()

    async def timed(self, body: dict[str, Any], cache: str | None = None) -> float:
        """`cache`: the x-llm-cache header the answer must carry (HIT, MISS), or None for any."""
        assert self.reader is not None and self.writer is not None
        data = orjson.dumps(body)
        req = (f"POST {self.path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
               f"Authorization: Bearer {MASTER}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(data)}\r\n\r\n").encode() + data
        t0 = time.perf_counter()
        self.writer.write(req)
        head = await self.reader.readuntil(b"\r\n\r\n")
        headers = {k.strip().lower(): v.strip() for k, _, v in
                   (line.partition(b":") for line in head.split(b"\r\n")[1:] if line)}
        if b"content-length" in headers:
            await self.reader.readexactly(int(headers[b"content-length"]))
        else:                                            # a stream: chunked, ends with a zero-size chunk
            await self.reader.readuntil(b"\r\n0\r\n\r\n")
        elapsed = time.perf_counter() - t0
        got = headers.get(b"x-llm-cache")
        if not head.startswith(b"HTTP/1.1 200") or (cache is not None and got != cache.encode()):
            status_line = head.split(b"\r\n")[0]
            raise RuntimeError(f"expected a 200 {cache or ''}, got {status_line!r} {got!r}")
        return elapsed


def run(coro: Any) -> Any:
    """asyncio.run on uvloop when installed (as `serve` runs)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)
