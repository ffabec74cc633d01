"""The usage writer process (`python -m proxy.store.usage_child`): numbered batches in, commits answered.

Why a process: a ledger write (binding ~26 parameters a row, the b-tree inserts, the driver's thread)
costs ~14 µs of the proxy's CPU per request when it shares the proxy's GIL; here it costs the proxy only
the msgpack encoding of a batch. The proxy end is proxy/store/usage_process.py; the pipe is
proxy/childproc.py's. Proxy -> child: one `Init`, then `(seq, [UsageEvent, ...])` batches. Child ->
proxy: `Ack(seq, failures, error)` once every batch up to `seq` is committed, and after each failed write
(the batch is retried, with a growing pause). At end of input it writes what it holds, then exits.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import sys

import msgspec

from proxy.childproc import child_stdio, read_frame, write_frame
from proxy.store.usage import UsageEvent, write_events

log = logging.getLogger("proxy.usage")
NICE = 10                        # scheduling priority below the proxy's
LAST_TRIES = 3                   # writes tried for what is left once the proxy has gone


class Init(msgspec.Struct, kw_only=True):
    url: str                     # the ledger (never on the command line: it may carry a password)
    batch: int
    interval: float
    log_level: str = "info"
    log_format: str = "json"


class Ack(msgspec.Struct, array_like=True):
    seq: int                     # every batch up to this one is committed
    failures: int                # failed writes so far
    error: str = ""              # the last failure's exception type, when this ack reports one


Batch = tuple[int, list[UsageEvent]]
encode = msgspec.msgpack.Encoder().encode


class Child:
    def __init__(self, ledger: object, init: Init, out_fd: int) -> None:
        self.ledger, self.init, self.out_fd = ledger, init, out_fd
        self.pending: collections.deque[Batch] = collections.deque()
        self.wake = asyncio.Event()
        self.eof = False
        self.committed = 0
        self.failures = 0

    def ack(self, error: str = "") -> None:
        write_frame(self.out_fd, encode(Ack(self.committed, self.failures, error)))

    async def read(self, reader: asyncio.StreamReader) -> None:
        decode = msgspec.msgpack.Decoder(Batch).decode
        try:
            while True:
                self.pending.append(decode(await read_frame(reader)))
                self.wake.set()
        except (asyncio.IncompleteReadError, ConnectionError):
            self.eof = True
            self.wake.set()

    def _take(self) -> list[Batch]:
        """Whole batches, oldest first, up to a few statements' worth."""
        taken: list[Batch] = []
        n = 0
        while self.pending and (not taken or n + len(self.pending[0][1]) <= 4 * self.init.batch):
            b = self.pending.popleft()
            taken.append(b)
            n += len(b[1])
        return taken

    async def write(self) -> None:
        pause, size = self.init.interval, max(1, self.init.batch)
        last_tries = LAST_TRIES
        while True:
            await self.wake.wait()
            self.wake.clear()
            while self.pending:
                taken = self._take()
                events = [e for _, es in taken for e in es]
                try:
                    for i in range(0, len(events), size):
                        await write_events(self.ledger, events[i:i + size])   # type: ignore[arg-type]
                except Exception as e:
                    self.pending.extendleft(reversed(taken))      # a replay skips what did commit
                    self.failures += 1
                    log.error("usage write failed (%d events waiting, retry in %.1fs): %s",
                              sum(len(b[1]) for b in self.pending), pause, type(e).__name__)
                    self.ack(type(e).__name__)
                    if self.eof:
                        last_tries -= 1
                        if last_tries <= 0:
                            log.error("usage writer exiting with %d events unwritten",
                                      sum(len(b[1]) for b in self.pending))
                            return
                    await asyncio.sleep(pause)
                    pause = min(5.0, pause * 2)
                    continue
                pause = self.init.interval
                self.committed = taken[-1][0]
                self.ack()
            if self.eof:
                return


async def main() -> None:
    """Niced: on a saturated host requests keep the CPU; the writer needs ~10 µs an event and catches
    up in the gaps (events wait in memory meanwhile, readable once written)."""
    out_fd = child_stdio()
    with contextlib.suppress(OSError):
        os.nice(NICE)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=1 << 30)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    init = msgspec.msgpack.decode(await read_frame(reader), type=Init)
    from proxy.store import open_ledger
    from proxy.telemetry.logging import setup_logging

    setup_logging(init.log_level, init.log_format)
    ledger = open_ledger(init.url)
    await ledger.connect()
    child = Child(ledger, init, out_fd)
    child.ack()                            # ready: the ledger is open
    reading = asyncio.create_task(child.read(reader))
    try:
        await child.write()
    finally:
        reading.cancel()
        with contextlib.suppress(BaseException):
            await reading
        await ledger.close()


if __name__ == "__main__":
    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())
