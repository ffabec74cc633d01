"""The proxy's end of the usage writer process: `add` queues, a timer hands batches to the child.

Every `interval` (or once `batch` events wait) the queued events go, msgpack-encoded and numbered, down
the child's stdin; the request path only appends to a list. A batch is kept until the child answers that
it is committed: if the child dies it is started again and sent every unanswered batch (request ids are
unique, so a replay never double-counts). Shutdown waits for the last answer; whatever the child could
not confirm by then is written here, through the proxy's own ledger connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from proxy.childproc import frame, read_frame, spawn
from proxy.store import Ledger
from proxy.store.usage import MAX_BATCH, UsageEvent, write_events
from proxy.store.usage_child import Ack, Init, encode

log = logging.getLogger("proxy.usage")
RESTART_PAUSE = (0.2, 5.0)       # first and longest pause before starting a dead child again


class ProcessUsageWriter:
    """Same surface as UsageWriter (add, flush, start, close, written, pending, dropped, failures)."""

    def __init__(self, ledger: Ledger, url: str, *, interval: float = 0.2, batch: int = 500,
                 max_queue: int = 100_000, log_level: str = "info", log_format: str = "json") -> None:
        self.ledger = ledger
        self.interval, self.max_queue = interval, max_queue
        self.batch = max(1, min(batch, MAX_BATCH))
        self._init = frame(encode(Init(url=url, batch=self.batch, interval=interval, log_level=log_level,
                                       log_format=log_format)))
        self._queue: list[UsageEvent] = []
        self._unacked: dict[int, tuple[bytes, list[UsageEvent]]] = {}   # seq -> (frame, events), in order
        self._in_child = 0                   # events in unanswered batches
        self._seq = self._acked = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._stdin: asyncio.StreamWriter | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._past_failures = 0              # failures reported by children that have exited
        self._child_failures = 0
        self.written = 0
        self.dropped = 0
        self.restarts = 0

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_child

    @property
    def failures(self) -> int:
        return self._past_failures + self._child_failures + self.restarts

    def add(self, event: UsageEvent) -> None:
        q = self._queue
        if len(q) + self._in_child >= self.max_queue:
            self.dropped += 1
            if not q:
                return
            q.pop(0)
        q.append(event)
        if len(q) >= self.batch:
            self._hand_off()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._hand_off)

    def _hand_off(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._queue:
            return
        events, self._queue = self._queue, []
        self._seq += 1
        data = frame(encode((self._seq, events)))
        self._unacked[self._seq] = (data, events)
        self._in_child += len(events)
        if self._stdin is not None and not self._stdin.is_closing():
            self._stdin.write(data)

    # -- the child -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._supervise(), name="usage-writer-process")

    async def _supervise(self) -> None:
        pause = RESTART_PAUSE[0]
        while not self._closing:
            try:
                await self._run_child()
                pause = RESTART_PAUSE[0]
            except Exception as e:
                log.error("usage writer process failed to start: %s", type(e).__name__)
            if self._closing:
                return
            self.restarts += 1
            log.error("usage writer process exited; restarting in %.1fs (%d events unconfirmed)", pause,
                      self._in_child)
            await asyncio.sleep(pause)
            pause = min(RESTART_PAUSE[1], pause * 2)

    async def _run_child(self) -> None:
        proc = await spawn("proxy.store.usage_child")
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(self._init)
        for data, _ in self._unacked.values():         # whatever the last child did not confirm
            proc.stdin.write(data)
        self._stdin = proc.stdin
        decode = msgspec.msgpack.Decoder(Ack).decode
        try:
            while True:
                try:
                    ack = decode(await read_frame(proc.stdout))
                except (asyncio.IncompleteReadError, ConnectionError):
                    break
                self._on_ack(ack)
        finally:
            self._stdin = None
            self._past_failures += self._child_failures
            self._child_failures = 0
            with contextlib.suppress(ProcessLookupError):
                if proc.returncode is None and not self._closing:
                    proc.kill()
            await proc.wait()

    def _on_ack(self, ack: Ack) -> None:
        self._child_failures = ack.failures
        while self._unacked:
            seq = next(iter(self._unacked))
            if seq > ack.seq:
                break
            _, events = self._unacked.pop(seq)
            self._in_child -= len(events)
            self.written += len(events)
        self._acked = max(self._acked, ack.seq)
        keep = []
        for target, fut in self._waiters:
            if fut.done():
                continue
            if target <= self._acked:
                fut.set_result(None)
            elif ack.error:
                fut.set_exception(RuntimeError(f"usage write failed: {ack.error}"))
            else:
                keep.append((target, fut))
        self._waiters = keep

    # -- flush and close -------------------------------------------------------------------------------

    async def flush(self, within: float = 10.0) -> None:
        """Hand off everything queued now and wait until the child has committed it. Raises if the
        ledger refuses the write or no answer comes `within` seconds (the events stay queued)."""
        self._hand_off()
        target = self._seq
        if target <= self._acked:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        await asyncio.wait_for(fut, within)

    async def close(self, within: float = 10.0) -> None:
        """Wait (up to `within`) for the child to confirm every batch, end it, write any remainder here."""
        self._hand_off()
        with contextlib.suppress(Exception):
            if self._unacked:
                await self.flush(within)
        self._closing = True
        proc, stdin = self._proc, self._stdin
        if stdin is not None:
            stdin.close()                          # EOF: the child writes what it holds and exits
        if proc is not None:
            try:
                await asyncio.wait_for(proc.wait(), within)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
            self._task = None
        await self._write_left_here()

    async def _write_left_here(self) -> None:
        """The child is gone with batches unconfirmed: write them through our own connection."""
        if not self._unacked:
            return
        events = [e for _, es in self._unacked.values() for e in es]
        try:
            for i in range(0, len(events), self.batch):
                await write_events(self.ledger, events[i:i + self.batch])
        except Exception as e:
            log.error("usage flush at shutdown failed (%d events): %s", len(events), type(e).__name__)
            return
        self.written += len(events)
        self._unacked.clear()
        self._in_child = 0
