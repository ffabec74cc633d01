"""The span exporter process (`python -m proxy.telemetry.otlp_child`): request traces in, OTLP out.

Why a process: building spans and their OTLP encoding costs ~10 µs a request (6 spans) under the GIL,
as much again as recording them on the request path. The proxy sends finished `RequestTrace` batches (trace_record.py) down
this process's stdin (proxy/childproc.py frames; its end is otlp_process.py); here they become spans and
go out through the official OTLP exporter (otlp_export.py). A reader thread drains the pipe into a
bounded backlog (full: the batch is dropped and counted), so the proxy's writes never wait on an export.
"""

from __future__ import annotations

import collections
import contextlib
import gc
import os
import random
import sys
import threading
from typing import Any

import msgspec

from proxy.childproc import child_stdio, read_frame_blocking, write_frame
from proxy.telemetry.otlp_export import (
    BATCH,
    FLUSH,
    MESSAGE_HEAD,
    ExportSettings,
    FlushAck,
    export_batch,
    make_exporter,
)
from proxy.telemetry.trace_record import RequestTrace

NICE = 19                       # the lowest priority: the exporter gets the CPU the proxy leaves idle
GC_EVERY = 64                   # exports between full garbage collections (see Exporter.run)
EXPORT_SPANS = 8192             # spans an OTLP export request reaches before it is sent (batches waiting are
                                # merged): ~1.5 MB, well under a collector's limit; each POST costs ~1 ms of CPU


Item = tuple[int, int, bytes]          # kind, spans, the traces' msgpack (still encoded)


class Exporter:
    """The child's two threads: `read` drains stdin into the backlog (no decoding, so it hardly needs the
    GIL), `run` decodes, encodes and exports."""

    def __init__(self, settings: ExportSettings, out_fd: int) -> None:
        self.settings, self.out_fd = settings, out_fd
        self.backlog: collections.deque[Item | None] = collections.deque()
        self.held = 0                  # spans in the backlog
        self.dropped = 0
        self.cv = threading.Condition()
        self.out_lock = threading.Lock()
        rng = random.Random()
        self.new_id = lambda: rng.getrandbits(64) or 1

    def tell(self, flushed: bool) -> None:
        """A flush's answer, or news of dropped spans (both threads call it: one write at a time)."""
        with self.out_lock:
            write_frame(self.out_fd, msgspec.msgpack.encode(FlushAck(self.dropped, flushed)))

    def read(self, stdin: Any) -> None:
        head = MESSAGE_HEAD.size
        while True:
            body = read_frame_blocking(stdin)
            item: Item | None = None
            if body is not None:
                kind, spans = MESSAGE_HEAD.unpack_from(body)
                item = (kind, spans, body[head:])
            with self.cv:
                n = item[1] if item is not None and item[0] == BATCH else 0
                if n and self.held + n > self.settings.max_queue_size:
                    self.dropped += n              # the collector is slow or gone: drop, keep draining
                    self.tell(flushed=False)
                else:
                    self.held += n
                    self.backlog.append(item)
                    self.cv.notify()
            if item is None:
                return

    def _take(self) -> tuple[list[bytes], int, bool]:
        """Batches waiting, oldest first, up to one export's worth (a flush or the end stops the run)."""
        with self.cv:
            while not self.backlog:
                self.cv.wait()
            taken: list[bytes] = []
            n = 0
            while self.backlog and n < EXPORT_SPANS:
                item = self.backlog[0]
                if item is None or item[0] == FLUSH:
                    if not taken:
                        self.backlog.popleft()
                        return [], 0, item is None
                    break
                self.backlog.popleft()
                taken.append(item[2])
                n += item[1]
            self.held -= n
            return taken, n, False

    def run(self, exporter: Any) -> None:
        """Decoded traces hold no reference cycles, so the cyclic GC stays off while thousands of them
        live (it cost ~2 µs a request in collections); a full collection every GC_EVERY exports clears
        whatever cycles the HTTP client made."""
        s = self.settings
        decode = msgspec.msgpack.Decoder(list[RequestTrace]).decode
        gc.freeze()                    # what start-up made (modules, the exporter) is never scanned again
        gc.disable()
        exports = 0
        while True:
            taken, n, end = self._take()
            if end:
                return
            if not taken:                               # a flush: everything before it is exported
                self.tell(flushed=True)
                continue
            try:
                export_batch(exporter, [t for data in taken for t in decode(data)], s, self.new_id)
            except Exception:          # an exporter bug must not end tracing: count the batch as dropped
                self.dropped += n
                self.tell(flushed=False)
            exports += 1
            if exports % GC_EVERY == 0:
                gc.collect()


def main() -> None:
    """Nice 19: the exporter takes the CPU the proxy leaves idle. On a host saturated for long, requests
    keep the CPU and the backlog drops spans instead (at 10 s of saturating load in the bench: none)."""
    out_fd = child_stdio()
    with contextlib.suppress(OSError):
        os.nice(NICE)
    stdin = sys.stdin.buffer
    init = read_frame_blocking(stdin)
    if init is None:
        return
    settings = msgspec.msgpack.decode(init, type=ExportSettings)
    exporter = make_exporter(settings)
    ex = Exporter(settings, out_fd)
    threading.Thread(target=ex.read, args=(stdin,), name="otlp-reader", daemon=True).start()
    try:
        ex.run(exporter)
    finally:
        exporter.shutdown()


if __name__ == "__main__":
    main()
