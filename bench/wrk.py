"""wrk, a C load generator, for the figures a Python load generator would distort.

On the 2-core reference machine, bench/load.py costs ~150 µs of CPU a request, as much as the proxy's
upstream and exporter together, and it runs on the same cores: a proxy that needs more CPU then also
loses a share of the load generator's, and the scheduler's noise between three busy processes swamps a
few points. wrk spends a few µs a request, so a run measures the proxy. It only reports a summary
(requests, errors, latency percentiles), and its durations are whole seconds. `BENCH_LOADGEN=python`
forces bench/load.py; without wrk on PATH (Debian: `apt-get install wrk`) the benches fall back to it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

_SCRIPT = """
wrk.method = "POST"
wrk.body = {body}
{headers}
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {{"requests":%d,"us":%d,"errors":%d,"status":%d,"p50":%d,"p99":%d}}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def available() -> bool:
    return os.environ.get("BENCH_LOADGEN", "wrk") != "python" and shutil.which("wrk") is not None


@dataclass
class WrkResult:
    requests: int          # answered, whatever their status
    errors: int            # socket errors, timeouts and non-2xx/3xx answers
    elapsed: float         # seconds
    p50_ms: float
    p99_ms: float

    @property
    def rps(self) -> float:
        return (self.requests - self.errors) / self.elapsed if self.elapsed else 0.0


def _lua(body: bytes, headers: dict[str, str]) -> str:
    """JSON strings are Lua strings for what a request body and headers hold (quotes, backslashes, \\n)."""
    lines = "\n".join(f"wrk.headers[{json.dumps(k)}] = {json.dumps(v)}" for k, v in headers.items())
    return _SCRIPT.format(body=json.dumps(body.decode()), headers=lines)


async def run_wrk(url: str, body: bytes, headers: dict[str, str], concurrency: int, seconds: int) -> WrkResult:
    """One thread, `concurrency` keep-alive connections, each a closed loop, for `seconds` (whole) s."""
    with tempfile.TemporaryDirectory(prefix="wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(_lua(body, headers))
        proc = await asyncio.create_subprocess_exec(
            "wrk", "-t1", f"-c{concurrency}", f"-d{max(1, seconds)}s", "--timeout", "10s", "-s", str(script), url,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
    for line in out.decode().splitlines():
        if line.startswith("RESULT "):
            r = json.loads(line[len("RESULT "):])
            errors = r["errors"] + r["status"]
            return WrkResult(r["requests"], errors, r["us"] / 1e6, r["p50"] / 1000, r["p99"] / 1000)
    raise RuntimeError(f"wrk gave no result: {(out + err).decode(errors='replace')[-500:]}")
