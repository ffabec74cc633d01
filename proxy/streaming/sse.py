"""Incremental SSE decoder: bytes in any split -> complete events. Used by converting adapters.

Events are dispatched only at a blank line, so the decoder buffers whole event blocks and parses each
block once, in bytes; it follows the WHATWG rules (CRLF/LF/CR line ends, multi-line data, comments).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    __slots__ = ("_buf", "_id")

    def __init__(self) -> None:
        self._buf = b""
        self._id: str | None = None

    def feed(self, chunk: bytes) -> list[Event]:
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            # A trailing CR may be the first half of a CRLF split across chunks: keep it back.
            hold = buf.endswith(b"\r")
            if hold:
                buf = buf[:-1]
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
            if hold:
                buf += b"\r"
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return []
        self._buf = buf[end + 2:]
        events: list[Event] = []
        for block in buf[:end].split(b"\n\n"):
            if block:
                ev = self._parse(block)
                if ev is not None:
                    events.append(ev)
        return events

    def _parse(self, block: bytes) -> Event | None:
        # Fast path for the common two-line block `event: X\ndata: {...}` (Anthropic, Bedrock-style SSE).
        if block.startswith(b"event: "):
            nl = block.find(b"\n")
            if nl > 0 and block.startswith(b"data: ", nl + 1) and block.find(b"\n", nl + 1) < 0:
                return Event(block[7:nl].decode(), block[nl + 7:].decode("utf-8", "replace"), self._id)
        event = b""
        data: list[bytes] = []
        for line in block.split(b"\n"):
            if line.startswith(b"data"):
                value = line[5:] if line[4:5] == b":" else (b"" if len(line) == 4 else None)
                if value is None:
                    continue            # a field merely starting with "data"
                data.append(value[1:] if value[:1] == b" " else value)
            elif line.startswith(b"event:"):
                value = line[6:]
                event = value[1:] if value[:1] == b" " else value
            elif line.startswith(b"id:"):
                value = line[3:]
                self._id = (value[1:] if value[:1] == b" " else value).decode("utf-8", "replace")
        if not data and not event:
            return None                 # comments only (keep-alives)
        return Event(event.decode() if event else "message",
                     (data[0] if len(data) == 1 else b"\n".join(data)).decode("utf-8", "replace"), self._id)

    def flush(self) -> list[Event]:
        """At EOF: an event not followed by a blank line is still dispatched."""
        if not self._buf.strip(b"\r\n"):
            self._buf = b""
            return []
        return self.feed(b"\n\n")
