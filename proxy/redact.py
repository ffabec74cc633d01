"""Secret redaction: the one function every upstream message passes through before anyone sees it.

Upstreams echo what they were sent (vLLM and many OpenAI-compatible servers put the rejected key in their
error message), and an error message goes to the client, the ledger (`usage_events.error`), the logs and
the spans. `Redactor.error` cleans it once, where the router receives it, so all four get the same
redacted text. `redact` (patterns only) also runs on every log line (proxy/telemetry/logging.py).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import msgspec

from proxy.errors import UpstreamError

if TYPE_CHECKING:
    from proxy.config import Config

MASK = "***"
MIN_SECRET_CHARS = 6       # shorter configured values cannot be replaced without mangling ordinary text

_TOKEN = r"[A-Za-z0-9._~+/=\-]"
_SECRETS = re.compile(
    rf"(?P<bearer>\b(?-i:Bearer|Basic)\s+){_TOKEN}+"                       # Authorization values
    rf"|\bsk-{_TOKEN}{{4,}}"                                              # OpenAI/Anthropic-style keys
    r"|\bAKIA[0-9A-Z]{16}\b"                                              # AWS access key ids
    r"|\bAIza[0-9A-Za-z_\-]{20,}"                                         # Google API keys
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"                                      # GitHub tokens
    r"|(?P<param>[?&;](?:key|api[_-]?key|access_token|token|sig|signature)=)[^\s\"'&#]+"   # URL parameters
    rf"|(?P<kv>\b(?:api[_-]?key|x-api-key|api-key|authorization|password|passwd|secret|token|"
    rf"access[_-]?key|secret[_-]?key)\b[\"']?\s*[:=]\s*[\"']?(?:(?:Bearer|Basic)\s+)?)[^\s\"'&,;}}]+",
    re.IGNORECASE,
)
# Settings fields (of any provider type) and header names whose values are credentials.
_SECRET_FIELD = re.compile(r"key|secret|token|password|credential", re.IGNORECASE)
_SECRET_HEADER = re.compile(r"auth|key|secret|token|password|credential|cookie|signature", re.IGNORECASE)


def _mask(m: re.Match[str]) -> str:
    return (m.group("bearer") or m.group("param") or m.group("kv") or "") + MASK


def redact(text: str) -> str:
    """Mask anything shaped like a credential: sk-... keys, Bearer tokens, api_key=..., ?key=..., cloud keys."""
    return _SECRETS.sub(_mask, text)


def configured_secrets(config: Config) -> list[str]:
    """Every secret the configuration holds: provider keys, credential headers and settings (AWS keys),
    server.secret, the master key, the metrics key and the collector's credential headers."""
    out = [config.server.master_key, config.server.secret, config.telemetry.metrics.key,
           *_credential_headers(config.telemetry.tracing.headers)]
    for p in config.providers.values():
        out.append(p.api_key)
        out.extend(_credential_headers(p.headers))
        if isinstance(p.settings, msgspec.Struct):
            for name in p.settings.__struct_fields__:
                value: Any = getattr(p.settings, name)
                if isinstance(value, str) and _SECRET_FIELD.search(name):
                    out.append(value)
    return out


def _credential_headers(headers: dict[str, str]) -> list[str]:
    """Values of headers named like credentials (`x-api-key`, `Authorization`), not `anthropic-version`."""
    return [v for k, v in headers.items() if _SECRET_HEADER.search(k)]


class Redactor:
    """The configured secrets, literally, then the credential shapes of `redact`."""

    __slots__ = ("_literal",)

    def __init__(self, secrets: Iterable[str]) -> None:
        words: set[str] = set()
        for s in secrets:
            s = s.strip()
            if len(s) >= MIN_SECRET_CHARS:
                words.add(s)
                rest = s.partition(" ")[2]    # a header value "Bearer xyz": the token alone too
                if rest and len(rest) >= MIN_SECRET_CHARS:
                    words.add(rest.strip())
        # Longest first, so a secret that contains another is masked whole.
        self._literal = (re.compile("|".join(re.escape(w) for w in sorted(words, key=len, reverse=True)))
                         if words else None)

    @classmethod
    def from_config(cls, config: Config) -> Redactor:
        return cls(configured_secrets(config))

    def text(self, text: str) -> str:
        if self._literal is not None:
            text = self._literal.sub(MASK, text)
        return redact(text)

    def data(self, data: bytes) -> bytes:
        """Stream bytes relayed as they came (an in-band error event): cleaned the same way."""
        text = data.decode("utf-8", "surrogateescape")
        clean = self.text(text)
        return data if clean == text else clean.encode("utf-8", "surrogateescape")

    def error(self, e: UpstreamError) -> UpstreamError:
        """Clean the error's message in place (before anything records it) and return it."""
        clean = self.text(e.message)
        if clean != e.message:
            e.message = clean
            e.args = (clean,)
        return e


class RedactingStream:
    """Wraps a provider's stream translator: errors it raises and in-band error events it relays come
    out redacted. Other attributes (usage, facts) are the translator's own."""

    __slots__ = ("_inner", "_redactor")

    def __init__(self, inner: Any, redactor: Redactor) -> None:
        self._inner = inner
        self._redactor = redactor

    def feed(self, data: bytes) -> bytes:
        try:
            out: bytes = self._inner.feed(data)
        except UpstreamError as e:
            raise self._redactor.error(e) from None
        if b'"error"' in out:       # memchr-fast; a healthy stream never carries an error object
            out = self._redactor.data(out)
        return out

    def finish(self) -> bytes:
        try:
            out: bytes = self._inner.finish()
        except UpstreamError as e:
            raise self._redactor.error(e) from None
        if b'"error"' in out:
            out = self._redactor.data(out)
        return out

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)
