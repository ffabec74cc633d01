"""PostgreSQL unreachable mid-run: a call under a budget gets 503 `ledger_unavailable` (never 500), a call
without one is still served. The gateway reaches PostgreSQL through a TCP forwarder the test then cuts."""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlsplit, urlunsplit

from tests.conftest import MASTER
from tests.cost_helpers import chat_body, priced_config, request
from tests.keys_helpers import pg_url  # noqa: F401 - fixture


class Forwarder:
    """127.0.0.1:<port> -> the real server; `cut()` closes every connection and stops accepting."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.server: asyncio.Server | None = None
        self.pipes: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _serve(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection(self.host, self.port)
        self.pipes |= {w, uw}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(r, uw), pump(ur, w))

    async def cut(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.pipes:
            w.transport.abort()
        await asyncio.sleep(0.05)


async def test_ledger_unreachable_is_503_for_budgeted_calls_only(start_proxy, pg_url):  # noqa: F811
    real = urlsplit(pg_url)
    fwd = Forwarder(real.hostname or "127.0.0.1", real.port or 5432)
    port = await fwd.start()
    via = urlunsplit(real._replace(netloc=f"{real.username}@127.0.0.1:{port}"))
    server = await start_proxy(priced_config(via, accounting={"writer": "inline"}))
    url = str(server.make_url("")).rstrip("/")
    st, b, _ = await request(url, "POST", "/admin/budgets", {"id": "team", "amount_usd": 1, "period": "monthly"})
    assert st == 200, b
    await fwd.cut()
    st, body, headers = await request(url, "POST", "/v1/chat/completions", chat_body("team"),
                                      {"Authorization": f"Bearer {MASTER}"})
    assert st == 503, body
    assert body["error"]["code"] == "ledger_unavailable" and body["error"]["type"] == "server_error"
    assert int(headers["Retry-After"]) >= 1
    st, body, _ = await request(url, "POST", "/v1/chat/completions", chat_body(),
                                {"Authorization": f"Bearer {MASTER}"})
    assert st == 200, body                    # no budget: served; its event waits in the writer
