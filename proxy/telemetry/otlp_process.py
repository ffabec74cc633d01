"""The proxy's end of the span exporter process: `send(batch)` never blocks, `flush()` waits for it.

Batches go down the child's stdin as frames written by the event loop's own pipe transport (no thread,
no lock). If the child cannot keep up (a slow collector, a frozen process) and the pipe's buffer passes
`MAX_BUFFER`, a batch is dropped and counted instead: a request never waits for an export.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from proxy.childproc import frame, frame_parts, read_frame, spawn
from proxy.telemetry.otlp_export import FLUSH_MESSAGE, ExportSettings, FlushAck, batch_parts

log = logging.getLogger("proxy.telemetry")
MAX_BUFFER = 8 * 1024 * 1024          # bytes waiting in the pipe transport before batches are dropped
_ENCODE = msgspec.msgpack.Encoder().encode


class ExportProcess:
    def __init__(self, settings: ExportSettings) -> None:
        self.settings = settings
        self.dropped_here = 0                            # spans dropped on this side (the pipe was full)
        self.dropped_there = 0                           # ... in the child (its backlog was full), as it last told
        self._proc: asyncio.subprocess.Process | None = None
        self._stdin: asyncio.StreamWriter | None = None
        self._acks: asyncio.Queue[FlushAck] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._closed = False

    @property
    def dropped(self) -> int:
        return self.dropped_here + self.dropped_there

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        return self._proc is not None and self._proc.returncode is None

    @property
    def exitcode(self) -> int | None:
        return self._proc.returncode if self._proc is not None else None

    async def start(self) -> None:
        if self._proc is not None or self._closed:
            return
        self._proc = proc = await spawn("proxy.telemetry.otlp_child")
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(frame(_ENCODE(self.settings)))
        self._stdin = proc.stdin
        self._acks = asyncio.Queue()
        self._reader = asyncio.create_task(self._read_acks(proc.stdout), name="otlp-acks")

    async def _read_acks(self, stdout: asyncio.StreamReader) -> None:
        decode = msgspec.msgpack.Decoder(FlushAck).decode
        with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError):
            while True:
                ack = decode(await read_frame(stdout))
                self.dropped_there = ack.dropped
                if ack.flushed:
                    assert self._acks is not None
                    self._acks.put_nowait(ack)
        self._stdin = None                               # the child is gone: nothing more can be exported

    def send(self, traces: list[bytes], spans: int) -> None:
        """`traces`: msgpack-encoded RequestTraces; `spans`: how many spans they hold (counted if dropped)."""
        w = self._stdin
        if w is None or self._closed or w.is_closing() or w.transport.get_write_buffer_size() > MAX_BUFFER:
            self.dropped_here += spans
            return
        w.writelines(frame_parts(batch_parts(traces, spans)))

    async def flush(self, within: float = 10.0) -> bool:
        """True once the child has exported everything sent before this call."""
        w, acks = self._stdin, self._acks
        if w is None or acks is None or self._closed:
            return False
        async with self._lock:
            w.write(frame(FLUSH_MESSAGE))
            try:
                await asyncio.wait_for(acks.get(), within)
            except TimeoutError:
                return False
            return True

    async def close(self, within: float | None = None) -> None:
        """Close the pipe (the child exports what it holds and exits), then reap it. Bounded by the
        export timeout (default): an unreachable collector cannot hold shutdown longer than one export."""
        self._closed = True
        proc, w = self._proc, self._stdin
        if proc is None:
            return
        if within is None:
            within = self.settings.export_timeout
        if w is not None and not w.is_closing():
            w.close()
        try:
            await asyncio.wait_for(proc.wait(), within)
        except TimeoutError:
            log.warning("span exporter did not exit within %gs; killing it", within)
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
