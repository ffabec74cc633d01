"""Helper processes the proxy feeds over a pipe: the usage writer and the span exporter.

Work that would otherwise share the event loop's GIL (ledger inserts, OTLP encoding) runs in a child
started with `python -m <module>`; the request path only appends to a list, and a timer hands batches
down the child's stdin. Both directions carry frames: a 4-byte big-endian length, then a msgpack body.
The child ignores SIGINT/SIGTERM and sits in its own session (a terminal's Ctrl-C or an orchestrator's
SIGTERM is for the proxy, which then drains it): it ends when the proxy closes its stdin.
"""

from __future__ import annotations

import asyncio
import os
import signal
import struct
import sys
from typing import BinaryIO

HEADER = struct.Struct(">I")


def frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


def frame_parts(parts: list[bytes]) -> list[bytes]:
    """One frame whose body is `parts` one after another, for `writelines` (uvloop writes them with
    one writev, no joined copy)."""
    return [HEADER.pack(sum(map(len, parts))), *parts]


async def read_frame(reader: asyncio.StreamReader) -> bytes:
    """The next frame's body; IncompleteReadError at end of stream."""
    (size,) = HEADER.unpack(await reader.readexactly(HEADER.size))
    return await reader.readexactly(size)


def read_frame_blocking(f: BinaryIO) -> bytes | None:
    """The next frame's body from a blocking file, or None at end of stream."""
    head = f.read(HEADER.size)
    if len(head) < HEADER.size:
        return None
    (size,) = HEADER.unpack(head)
    body = f.read(size)
    return body if len(body) == size else None


async def spawn(module: str) -> asyncio.subprocess.Process:
    """`python -m module` with pipes on stdin and stdout; stderr is the proxy's (its log lines)."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        start_new_session=True)


def child_stdio() -> int:
    """In the child: the fd to write frames to. Whatever else writes to stdout (a stray print) goes to
    stderr instead of corrupting the frames; the proxy, not a signal, decides when the child ends."""
    out = os.dup(1)
    os.dup2(2, 1)
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    return out


def write_frame(fd: int, body: bytes) -> None:
    data = frame(body)
    while data:
        data = data[os.write(fd, data):]
