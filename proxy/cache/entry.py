"""What the cache stores for one answer, and its byte encoding (msgpack, zlib above a size threshold)."""

from __future__ import annotations

import zlib

import msgspec

from proxy.context import Usage

_RAW, _ZLIB = b"\x00", b"\x01"


class Entry(msgspec.Struct, array_like=True, omit_defaults=True, gc=False):
    created: float                      # wall-clock time of the write (for `age` and max-age)
    model: str                          # the configured model name
    provider: str = ""                  # who produced it (for the saved-cost figure)
    upstream_model: str = ""
    usage: Usage | None = None
    body: bytes | None = None           # the whole JSON answer (assembled, for a stored stream)
    events: list[bytes] | None = None   # a stream's SSE events as sent, minus the usage-only event
    usage_event: bytes | None = None    # that event, replayed only to clients that ask for usage


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Entry)


def encode(entry: Entry, compress_over: int) -> bytes:
    data = _encoder.encode(entry)
    if len(data) > compress_over:
        return _ZLIB + zlib.compress(data, 1)
    return _RAW + data


def decode(value: bytes) -> Entry | None:
    """None for anything unreadable (a foreign or older format): the caller treats it as a miss."""
    try:
        data = value[1:]
        if value[:1] == _ZLIB:
            data = zlib.decompress(data)
        elif value[:1] != _RAW:
            return None
        return _decoder.decode(data)
    except (msgspec.DecodeError, zlib.error):
        return None
