"""The audit log: every admin action and every auth failure (who, what, when, from where; never a secret).

Admin actions are written before the action's answer goes out. Auth failures are on the hot path of a
possible attack, so they go into a bounded queue that a background task writes in batches; when the
queue is full, events are dropped and counted (`dropped`), never awaited.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from aiohttp import web

from proxy.errors import ProxyError
from proxy.keys import DISPLAY_CHARS, KEY_PREFIX
from proxy.store import AuditEvent, Ledger

log = logging.getLogger("proxy.audit")
ACTOR = web.RequestKey("audit_actor", str)     # set by handlers that know who the caller is


class AuditLog:
    def __init__(self, ledger: Ledger, *, max_queue: int = 10_000, batch: int = 500,
                 interval: float = 0.25) -> None:
        self.ledger, self.max_queue, self.batch, self.interval = ledger, max_queue, batch, interval
        self._queue: list[AuditEvent] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self.dropped = 0
        self.written = 0

    async def record(self, action: str, actor: str, *, target: str | None = None, ip: str | None = None,
                     detail: dict[str, Any] | None = None) -> None:
        """Write now (admin actions: the caller waits for the ledger)."""
        await self.flush()
        ev = AuditEvent(ts=time.time(), action=action, actor=actor, target=target, ip=ip, detail=detail or {})
        await self.ledger.write_audit([ev])
        self.written += 1

    def enqueue(self, action: str, actor: str, *, target: str | None = None, ip: str | None = None,
                detail: dict[str, Any] | None = None) -> None:
        """Queue for the background writer (auth failures). Never blocks; drops when full."""
        if len(self._queue) >= self.max_queue:
            self.dropped += 1
            return
        self._queue.append(AuditEvent(ts=time.time(), action=action, actor=actor, target=target, ip=ip,
                                      detail=detail or {}))
        if len(self._queue) >= self.batch:
            self._wake.set()

    async def flush(self) -> None:
        async with self._lock:
            while self._queue:
                batch, self._queue = self._queue[: self.batch], self._queue[self.batch:]
                try:
                    await self.ledger.write_audit(batch)
                    self.written += len(batch)
                except Exception as e:
                    self.dropped += len(batch)
                    log.error("audit write failed, %d events dropped: %s", len(batch), type(e).__name__)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="audit-writer")

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval)
            self._wake.clear()
            await self.flush()

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        await self.flush()


def credential_hint(credential: str | None) -> str | None:
    """The display prefix of one of our keys, which is stored anyway; nothing of any other secret."""
    if credential and credential.startswith(KEY_PREFIX):
        return credential[:DISPLAY_CHARS]
    return None


def client_ip(request: web.Request) -> str | None:
    return request.remote


def denial_recorder(audit: AuditLog):
    """For the errors middleware: each 401, 403 or throttled auth failure (429) on any route becomes an
    audit event (queued)."""
    from proxy.api.parse import credential_from

    def record(request: web.Request, e: ProxyError) -> None:
        detail: dict[str, Any] = {"reason": e.message, "method": request.method, "path": request.path}
        hint = credential_hint(credential_from(request.headers))
        if hint:
            detail["key_prefix"] = hint
        action = {401: "auth.failure", 429: "auth.throttled"}.get(e.status, "auth.forbidden")
        audit.enqueue(action, request.get(ACTOR, "anonymous"), ip=client_ip(request), detail=detail)

    return record
