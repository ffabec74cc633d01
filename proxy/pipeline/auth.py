"""Who is calling. The master key is checked in constant time; virtual keys plug in via `KeyLookup`."""

from __future__ import annotations

import hashlib
import hmac
import re
from fnmatch import fnmatchcase
from typing import Any, Protocol

import msgspec

from proxy.context import ChatCall
from proxy.errors import Unauthorized

_GLOB = re.compile(r"[*?\[]")


class Principal(msgspec.Struct, frozen=True, kw_only=True):
    """An authenticated caller: the master key or a virtual key."""

    id: str
    name: str = ""
    is_master: bool = False
    models: tuple[str, ...] | None = None        # None: every model
    source_id: str | None = None
    source_type: str | None = None
    budget_id: str | None = None
    rpm: int | None = None                        # requests per minute, None: no key limit
    tpm: int | None = None                        # tokens per minute
    max_concurrency: int | None = None            # requests in flight at once
    metadata: dict[str, Any] = {}
    expires_at: float | None = None               # unix seconds; checked on every request, cached or not

    def may_use(self, model: str) -> bool:
        """`models` holds names or shell-style globs (`gpt-4o*`, `claude-?-*`)."""
        if self.models is None:
            return True
        return model in self.models or any(fnmatchcase(model, p) for p in self.models if _GLOB.search(p))


class KeyLookup(Protocol):
    async def find(self, credential: str) -> Principal | None: ...


MASTER = Principal(id="master", name="master key", is_master=True)


class Authenticator:
    def __init__(self, master_key: str, lookup: KeyLookup | None = None) -> None:
        if not master_key:
            raise ValueError("a master key is required: the gateway never runs open")
        self._master_digest = hashlib.sha256(master_key.encode()).digest()
        self.lookup = lookup

    async def authenticate(self, credential: str | None) -> Principal:
        if not credential:
            raise Unauthorized("You didn't provide an API key. Pass it as 'Authorization: Bearer <key>'.")
        digest = hashlib.sha256(credential.encode()).digest()
        if hmac.compare_digest(digest, self._master_digest):
            return MASTER
        if self.lookup is not None:
            found = await self.lookup.find(credential)
            if found is not None:
                return found
        raise Unauthorized("Incorrect API key provided.")


class AuthStage:
    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    async def check(self, call: ChatCall) -> None:
        call.key = await self.auth.authenticate(call.credential)
