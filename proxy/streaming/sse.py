"""Incremental SSE decoder: bytes in any split -> complete events. Used by converting adapters."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True)
class Event:
    event: str
    data: str
    id: str | None = None


class SSEDecoder:
    """Follows the WHATWG event-stream rules: CRLF/LF/CR line ends, multi-line data, comments ignored."""

    __slots__ = ("_buf", "_data", "_event", "_id")

    def __init__(self) -> None:
        self._buf = b""
        self._event = ""
        self._data: list[str] = []
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
        cut = buf.rfind(b"\n")
        if cut < 0:
            self._buf = buf
            return []
        self._buf = buf[cut + 1:]
        events: list[Event] = []
        for raw in buf[:cut].split(b"\n"):
            if not raw:
                if self._data or self._event:
                    events.append(Event(self._event or "message", "\n".join(self._data), self._id))
                self._event, self._data = "", []
                continue
            line = raw.decode("utf-8", "replace")
            if line[0] == ":":
                continue
            name, _, value = line.partition(":")
            if value.startswith(" "):
                value = value[1:]
            if name == "data":
                self._data.append(value)
            elif name == "event":
                self._event = value
            elif name == "id":
                self._id = value
        return events

    def flush(self) -> list[Event]:
        """At EOF: an event not followed by a blank line is still dispatched."""
        events = self.feed(b"\n\n") if (self._buf or self._data or self._event) else []
        return events
