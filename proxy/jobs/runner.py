"""The worker in each gateway process: claims async jobs, batch lines, batch steps and webhook
deliveries from the ledger with leases, and runs at most `jobs.concurrency` calls at once (batch lines at
most `jobs.batch_share` of them, so live traffic and jobs keep room).

Exactly once: a batch line's result is settled only after its call's usage event is in the ledger
(the writer is flushed first), in one transaction that leaves a line already settled alone; the event's
request id is derived from the line, so a line run again (its worker died after the call) records no
second event. On shutdown the worker stops claiming, lets the drain finish what is in flight, settles
what finished and gives the rest back (their leases released, so another worker takes them at once).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from random import getrandbits

from proxy.config import Config
from proxy.context import Principal
from proxy.errors import ProxyError
from proxy.gateway import Gateway
from proxy.jobs import work
from proxy.jobs.driver import Driver
from proxy.jobs.jsonl import ENDPOINTS
from proxy.jobs.webhooks import Sender, new_delivery
from proxy.store import Ledger
from proxy.store import batches as bstore
from proxy.store import jobs as jstore
from proxy.store.batches import Line, Settled
from proxy.store.jobs import COMPLETED, FAILED, Job

log = logging.getLogger("proxy.jobs")
# Refusals that pass (a limit, a budget, the ledger, a drain): the line runs again later rather than
# failing. A target whose circuit is open is an upstream failure: the line fails, as OpenAI's would.
WAIT_CODES = frozenset({"rate_limit_exceeded", "insufficient_quota", "ledger_unavailable", "gateway_shutting_down"})
KEY_TTL = 5.0                        # seconds a job's key is cached by the worker (a revoke applies within)


class Runner:
    def __init__(self, config: Config, gw: Gateway, ledger: Ledger) -> None:
        self.config, self.cfg, self.gw, self.ledger = config, config.jobs, gw, ledger
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{getrandbits(32):08x}"
        self.driver = Driver(config, ledger, gw.router.models)
        self.sender = Sender(config.webhooks, ledger)
        self.line_cap = max(1, int(self.cfg.concurrency * self.cfg.batch_share))
        self.jobs: dict[str, asyncio.Task[None]] = {}
        self.lines: dict[tuple[str, str], asyncio.Task[None]] = {}
        self.deliveries: set[asyncio.Task[None]] = set()
        self.to_settle: list[Settled] = []
        self.wake = asyncio.Event()
        self.stopping = False
        self._task: asyncio.Task[None] | None = None
        self._keys: dict[str, tuple[Principal, float]] = {}
        self._batches: dict[str, tuple[str, str]] = {}       # batch id -> (key id, endpoint)
        self._renew_at = self._purge_at = self._full_at = 0.0
        self.lines_run = self.jobs_run = 0                   # calls made (stats, tests)

    # -- lifecycle ---------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop(), name="jobs-runner")

    def poke(self) -> None:
        """New work was submitted here: a full look at once rather than at the next poll."""
        self._full_at = 0.0
        self.wake.set()

    async def stop(self, within: float = 5.0) -> None:
        """Take nothing new; wait briefly for what runs, settle what finished, give the rest back."""
        self.stopping = True
        self.wake.set()
        if self._task is not None:              # the loop ends after its current step, not inside it
            _, late = await asyncio.wait([self._task], timeout=within)
            for t in late:
                t.cancel()
                with contextlib.suppress(BaseException):
                    await t
        running = [*self.jobs.values(), *self.lines.values()]
        if running:
            _, pending = await asyncio.wait(running, timeout=within)
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.wait(pending, timeout=2.0)
        try:
            await self._settle()
        except Exception as e:                  # their leases expire: they run again, billed once
            log.error("jobs worker: settling at shutdown failed: %s: %s", type(e).__name__, e)
        try:
            await jstore.release(self.ledger, self.owner, list(self.jobs))
            await bstore.release_lines(self.ledger, self.owner, list(self.lines))
        except Exception as e:
            log.error("jobs worker: releasing leases at shutdown failed: %s: %s", type(e).__name__, e)
        for t in list(self.deliveries):
            t.cancel()
        await self.sender.close()

    async def _loop(self) -> None:
        while not self.stopping:
            if self.gw.accepting:
                try:
                    await self._tick()
                except Exception as e:          # the ledger unreachable: try again at the next poll
                    log.error("jobs worker: %s: %s", type(e).__name__, e)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.wake.wait(), self.cfg.poll_interval)
            self.wake.clear()

    async def _tick(self) -> None:
        """A line's end wakes the loop to refill lines and settle them in groups; jobs, batch steps and
        webhooks are looked at on a full tick (every poll, or at once after a submission or a job's end):
        each look is a database round trip on the gateway's event loop, next to live calls."""
        now = time.monotonic()
        full = now >= self._full_at
        if full:
            self._full_at = now + self.cfg.poll_interval
        group = max(1, self.line_cap // 2)
        if self.to_settle and (full or len(self.to_settle) >= group or not self.lines):
            await self._settle()
        if now >= self._renew_at:
            self._renew_at = now + self.cfg.lease_seconds / 3
            await self._renew()
        free = self.cfg.concurrency - len(self.jobs) - len(self.lines)
        if full and free > 0:
            for job in await jstore.claim(self.ledger, self.owner, free, self.cfg.lease_seconds):
                self._spawn_job(job)
        free = min(self.cfg.concurrency - len(self.jobs) - len(self.lines), self.line_cap - len(self.lines))
        if free > 0 and (full or free >= group):
            for line in await bstore.claim_lines(self.ledger, self.owner, free, self.cfg.lease_seconds):
                key = (line.batch_id, line.custom_id)
                self.lines[key] = asyncio.create_task(self._run_line(line))
                self.lines[key].add_done_callback(lambda _t: self.wake.set())
        if not full:
            return
        for _ in range(4):                      # batch steps: validate, progress, finalize
            got = await bstore.claim_batch(self.ledger, self.owner, self.cfg.lease_seconds)
            if got is None:
                break
            key_id, doc = got
            after = await self.driver.step(key_id, doc)
            # looked at again on the first full tick after `after` (progress: within progress_interval)
            await bstore.unlease_batch(self.ledger, doc["id"], self.owner, max(0.0, after - self.cfg.poll_interval))
            if after == 0:                      # it moved on (e.g. validated): its lines are claimable now
                self.poke()
        if self.sender.signer is not None and len(self.deliveries) < self.cfg.concurrency:
            for d in await self.sender.due(self.cfg.concurrency - len(self.deliveries)):
                t = asyncio.create_task(self.sender.attempt(d))
                self.deliveries.add(t)
                t.add_done_callback(self.deliveries.discard)
        if now >= self._purge_at:
            self._purge_at = now + 60.0
            await jstore.purge(self.ledger)

    async def _renew(self) -> None:
        gone = await jstore.renew(self.ledger, self.owner, list(self.jobs), self.cfg.lease_seconds)
        for job_id in gone:                     # cancelled (or taken over): stop the call
            task = self.jobs.get(job_id)
            if task is not None:
                task.cancel()
        held = [*self.lines, *((s.batch_id, s.custom_id) for s in self.to_settle)]
        await bstore.renew_lines(self.ledger, self.owner, held, self.cfg.lease_seconds)

    def cancel_job(self, job_id: str) -> None:
        task = self.jobs.get(job_id)
        if task is not None:
            task.cancel()

    # -- the work ----------------------------------------------------------------------------------------

    async def _key(self, key_id: str) -> Principal:
        hit = self._keys.get(key_id)
        if hit is not None and time.monotonic() - hit[1] < KEY_TTL:
            return hit[0]
        key = await work.principal(self.ledger, key_id)
        self._keys[key_id] = (key, time.monotonic())
        return key

    def _spawn_job(self, job: Job) -> None:
        task = asyncio.create_task(self._run_job(job))
        self.jobs[job.id] = task

        def done(_t: asyncio.Task[None]) -> None:
            self.jobs.pop(job.id, None)
            self.poke()
        task.add_done_callback(done)

    async def _run_job(self, job: Job) -> None:
        try:
            key = await self._key(job.key_id)
            call = work.new_call(job.body, job.endpoint, key, work.job_request_id(job.id), "job", job.headers)
            self.jobs_run += 1
            out = await work.run(self.gw, call)
        except ProxyError as e:
            if e.status == 503 and not self.gw.accepting:   # shutting down: give the job back
                await jstore.release(self.ledger, self.owner, [job.id])
                return
            out = work.refused(e)
        except asyncio.CancelledError:          # cancelled by its owner (then this is a no-op), or the drain
            with contextlib.suppress(Exception):
                await jstore.release(self.ledger, self.owner, [job.id])
            return
        ok = out.status < 400
        done = await jstore.finish(self.ledger, self.owner, job.id, COMPLETED if ok else FAILED, out.status,
                                   out.body if ok else None, None if ok else work.error_object(out.body),
                                   self.cfg.result_ttl)
        if done is not None and done.webhook_url:
            await jstore.add_delivery(self.ledger, new_delivery(
                done.id, done.webhook_url, "job.completed" if ok else "job.failed", done.public()))

    async def _run_line(self, line: Line) -> None:
        key = (line.batch_id, line.custom_id)
        try:
            await self._line(line)
        except asyncio.CancelledError:
            pass                                # stop() releases the lease
        except Exception:
            log.exception("batch %s line %d failed", line.batch_id, line.line_no)
            with contextlib.suppress(Exception):
                await bstore.release_lines(self.ledger, self.owner, [key], time.time() + 1.0)
            self.lines.pop(key, None)
        else:
            self.lines.pop(key, None)

    async def _line(self, line: Line) -> None:
        key_id, endpoint = await self._batch(line.batch_id)
        rid = work.line_request_id(line.batch_id, line.line_no)
        try:
            call = work.new_call(dict(line.body), ENDPOINTS.get(endpoint, "chat.completions"),
                                 await self._key(key_id), rid, "batch")
            call.batch_id, call.custom_id = line.batch_id, line.custom_id
            self.lines_run += 1
            out = await work.run(self.gw, call)
        except ProxyError as e:
            if e.status == 503:                 # shutting down: give the line back
                await bstore.release_lines(self.ledger, self.owner, [(line.batch_id, line.custom_id)])
                return
            out = work.refused(e)
        if out.refused_before_provider and out.code in WAIT_CODES:
            await self._later(line, out)
            return
        self.to_settle.append(work.settled(line, rid, out))
        self.wake.set()

    async def _later(self, line: Line, out: work.Outcome) -> None:
        """Refused by a limit, a budget or a passing outage before reaching a provider: no event was
        written; the line waits and runs again (a budget that ran out pauses the whole batch)."""
        b = self.config.batches
        wait = b.budget_pause if out.code == "insufficient_quota" else b.rate_limit_pause
        until = time.time() + wait
        if out.code == "insufficient_quota":
            await bstore.pause_batch(self.ledger, line.batch_id, until)
            got = await bstore.get_batch(self.ledger, line.batch_id)
            if got is not None and got[1]["status"] == bstore.IN_PROGRESS:
                doc = got[1]
                doc["pause_reason"] = f"budget_exhausted: {work.error_object(out.body).get('message')}"
                doc["_paused_until"] = until
                await bstore.save_batch(self.ledger, doc, expect=bstore.IN_PROGRESS)
        await bstore.release_lines(self.ledger, self.owner, [(line.batch_id, line.custom_id)], until)

    async def _batch(self, batch_id: str) -> tuple[str, str]:
        hit = self._batches.get(batch_id)
        if hit is None:
            got = await bstore.get_batch(self.ledger, batch_id)
            if got is None:
                raise LookupError(batch_id)
            hit = self._batches[batch_id] = (got[0], got[1]["endpoint"])
        return hit

    async def _settle(self) -> None:
        """Usage events first (their ends settled, the writer flushed), then the lines, in one transaction."""
        done, self.to_settle = self.to_settle, []
        if not done:
            return
        try:
            await self.gw.settled()
            acct = self.gw.accounting
            if acct is not None:
                await acct.writer.flush(10.0)
            await bstore.settle_lines(self.ledger, done)
        except BaseException:
            self.to_settle = done + self.to_settle
            raise

