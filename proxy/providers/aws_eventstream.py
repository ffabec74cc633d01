"""Incremental decoder for AWS `application/vnd.amazon.eventstream` (Bedrock ConverseStream, Transcribe, ...).

Each message: prelude (total length u32, headers length u32, CRC32 of those 8 bytes), headers, payload,
then a CRC32 of everything before it. All integers big-endian. A header is: name length u8, name,
value type u8, value (see `_header_value`). Bytes may arrive in any split; a bad CRC or an impossible
length raises `UpstreamError` (the stream cannot be resynchronised after that).
"""

from __future__ import annotations

import struct
import uuid
import zlib
from dataclasses import dataclass

from proxy.errors import UpstreamError

PRELUDE = 12                       # total length, headers length, prelude CRC
MIN_MESSAGE = PRELUDE + 4          # plus the message CRC
MAX_MESSAGE = 16 * 1024 * 1024     # AWS caps a message at 16 MiB; anything larger is garbage

HeaderValue = bool | int | bytes | str


@dataclass(slots=True)
class Message:
    headers: dict[str, HeaderValue]
    payload: bytes

    def header(self, name: str) -> str:
        v = self.headers.get(name)
        return v if isinstance(v, str) else ""


class EventStreamDecoder:
    """Feed bytes, get complete messages. Holds at most one partial message between calls."""

    __slots__ = ("_buf",)

    def __init__(self) -> None:
        self._buf = bytearray()

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message still held (non-zero at EOF means the stream was cut)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[Message]:
        self._buf += data
        out: list[Message] = []
        buf = self._buf
        pos = 0
        n = len(buf)
        while n - pos >= PRELUDE:
            total, hlen, pcrc = struct.unpack_from(">III", buf, pos)
            if zlib.crc32(buf[pos:pos + 8]) != pcrc:
                raise UpstreamError("AWS event stream: prelude checksum mismatch")
            if total < MIN_MESSAGE or total > MAX_MESSAGE or hlen > total - MIN_MESSAGE:
                raise UpstreamError(f"AWS event stream: impossible message length {total}")
            if n - pos < total:
                break
            end = pos + total
            (mcrc,) = struct.unpack_from(">I", buf, end - 4)
            if zlib.crc32(buf[pos:end - 4]) != mcrc:
                raise UpstreamError("AWS event stream: message checksum mismatch")
            hstart = pos + PRELUDE
            headers = _parse_headers(bytes(buf[hstart:hstart + hlen]))
            out.append(Message(headers, bytes(buf[hstart + hlen:end - 4])))
            pos = end
        if pos:
            del buf[:pos]
        return out


def _parse_headers(raw: bytes) -> dict[str, HeaderValue]:
    headers: dict[str, HeaderValue] = {}
    i, n = 0, len(raw)
    try:
        while i < n:
            nlen = raw[i]
            name = raw[i + 1:i + 1 + nlen].decode("utf-8")
            i += 1 + nlen
            htype = raw[i]
            value, i = _header_value(htype, raw, i + 1)
            headers[name] = value
    except (IndexError, struct.error, UnicodeDecodeError):
        raise UpstreamError("AWS event stream: malformed headers") from None
    return headers


def _header_value(htype: int, raw: bytes, i: int) -> tuple[HeaderValue, int]:
    """Types: 0 true, 1 false, 2 byte, 3 short, 4 int, 5 long, 6 bytes, 7 string, 8 timestamp (ms), 9 uuid."""
    if htype == 0:
        return True, i
    if htype == 1:
        return False, i
    if htype in _INTS:
        fmt, size = _INTS[htype]
        if i + size > len(raw):
            raise IndexError
        return struct.unpack_from(fmt, raw, i)[0], i + size
    if htype in (6, 7):
        (length,) = struct.unpack_from(">H", raw, i)
        end = i + 2 + length
        if end > len(raw):
            raise IndexError
        data = raw[i + 2:end]
        return (data.decode("utf-8") if htype == 7 else data), end
    if htype == 9:
        if i + 16 > len(raw):
            raise IndexError
        return str(uuid.UUID(bytes=raw[i:i + 16])), i + 16
    raise UpstreamError(f"AWS event stream: unknown header type {htype}")


_INTS = {2: (">b", 1), 3: (">h", 2), 4: (">i", 4), 5: (">q", 8), 8: (">q", 8)}
