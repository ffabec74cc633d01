"""Job webhooks in the Standard Webhooks format: `webhook-id` (the same on every attempt),
`webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>` with the `whsec_` secret.

Only hosts listed in `webhooks.allow_hosts` are ever called, so a client cannot aim the gateway at an
internal address. A non-2xx answer or a timeout is retried with exponential backoff from
`webhooks.backoff_base` up to `webhooks.max_attempts`; deliveries live in the ledger, so a restart
resumes them; the ones that used every attempt are listed at GET /admin/webhooks/failed.
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from random import getrandbits
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import orjson
from standardwebhooks.webhooks import Webhook

from proxy.config import WebhooksConfig
from proxy.errors import InvalidRequest
from proxy.store import Ledger
from proxy.store import jobs as store
from proxy.store.jobs import Delivery

log = logging.getLogger("proxy.webhooks")


def check_url(url: Any, cfg: WebhooksConfig, param: str) -> str:
    """A 400 naming `param` unless the URL is http(s) to a listed host (and a secret is configured)."""
    if not isinstance(url, str) or not url:
        raise InvalidRequest(f"Invalid '{param}': expected a URL.", param=param, code="invalid_type")
    try:
        u = urlsplit(url)
        host, port = (u.hostname or "").lower(), u.port
    except ValueError:
        raise InvalidRequest(f"Invalid '{param}': not a URL.", param=param, code="invalid_value") from None
    if u.scheme not in ("http", "https") or not host or u.username or u.password:
        raise InvalidRequest(f"Invalid '{param}': expected an http(s) URL without credentials.", param=param,
                             code="invalid_value")
    if not cfg.secret:
        raise InvalidRequest(f"Invalid '{param}': webhooks are not configured on this gateway.", param=param,
                             code="webhooks_disabled")
    shown = f"[{host}]" if ":" in host else host
    allowed = {h.lower() for h in cfg.allow_hosts}
    if host not in allowed and (port is None or f"{shown}:{port}" not in allowed):
        raise InvalidRequest(f"Invalid '{param}': host '{host}' is not in webhooks.allow_hosts.", param=param,
                             code="webhook_host_not_allowed")
    return url


def new_delivery(job_id: str, url: str, event: str, job: dict[str, Any]) -> Delivery:
    now = time.time()
    payload = orjson.dumps({"type": event, "timestamp": datetime.fromtimestamp(now, UTC).isoformat(),
                            "data": job}).decode()
    return Delivery(id=f"msg_{getrandbits(96):024x}", job_id=job_id, url=url, payload=payload, next_at=now,
                    created_at=now, updated_at=now)


class Sender:
    """Tries due deliveries; the runner calls `due()` and runs `attempt()` for each."""

    def __init__(self, cfg: WebhooksConfig, ledger: Ledger) -> None:
        self.cfg, self.ledger = cfg, ledger
        self.signer = Webhook(cfg.secret) if cfg.secret else None
        self._session: aiohttp.ClientSession | None = None

    def backoff(self, attempts: int) -> float:
        return min(self.cfg.backoff_max, self.cfg.backoff_base * 2 ** (attempts - 1))

    async def due(self, n: int) -> list[Delivery]:
        return await store.claim_deliveries(self.ledger, n, self.cfg.timeout * 2 + 5)

    async def attempt(self, d: Delivery) -> None:
        if self.signer is None:
            return
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.cfg.timeout))
        now = datetime.now(UTC)
        headers = {"content-type": "application/json", "webhook-id": d.id,
                   "webhook-timestamp": str(int(now.timestamp())),
                   "webhook-signature": self.signer.sign(d.id, now, d.payload)}
        d.attempts += 1
        try:
            async with self._session.post(d.url, data=d.payload.encode(), headers=headers,
                                          allow_redirects=False) as r:
                ok, why = 200 <= r.status < 300, f"HTTP {r.status}"
        except (aiohttp.ClientError, TimeoutError) as e:
            ok, why = False, type(e).__name__
        if ok:
            d.status, d.last_error = "delivered", None
        elif d.attempts >= self.cfg.max_attempts:
            d.status, d.last_error = "failed", why
            log.warning("webhook %s for %s failed after %d attempts: %s", d.id, d.job_id, d.attempts, why)
        else:
            d.last_error, d.next_at = why, time.time() + self.backoff(d.attempts)
        await store.delivery_tried(self.ledger, d)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
