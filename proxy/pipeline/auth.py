"""Who is calling. The master key is checked in constant time; virtual keys plug in via `KeyLookup`."""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

from proxy.context import MASTER, ChatCall, Principal
from proxy.errors import Unauthorized

__all__ = ["MASTER", "AuthStage", "Authenticator", "KeyLookup", "Principal"]

class KeyLookup(Protocol):
    async def find(self, credential: str) -> Principal | None: ...


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
        if call.key is None:        # set already: a stored job or batch line, authenticated at submission
            call.key = await self.auth.authenticate(call.credential)
