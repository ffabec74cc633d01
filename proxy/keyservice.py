"""Key management shared by the admin API and the CLI: validate, create, update, revoke, rotate.

Every change is audited and invalidates the key's cached lookups on every replica. `KeyStore` bundles
the ledger, the cached lookup, the audit log and the invalidation channel with their start/stop.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import orjson

from proxy.audit import AuditLog
from proxy.config import Config
from proxy.errors import InvalidRequest, NotFound
from proxy.keys import Invalidator, KeyHasher, LedgerKeyLookup, display_prefix, new_key_id, new_secret
from proxy.store import KEY_MUTABLE, KeyRecord, Ledger, open_ledger

CREATE_FIELDS = frozenset(KEY_MUTABLE) - {"disabled"}
PATCH_FIELDS = frozenset(KEY_MUTABLE)
SOURCE_TYPES = ("application", "service")
MAX_GRACE = 7 * 24 * 3600


def _bad(param: str, message: str, code: str = "invalid_value") -> InvalidRequest:
    return InvalidRequest(f"Invalid '{param}': {message}", param=param, code=code)


def parse_time(value: Any, param: str) -> float | None:
    """Unix seconds, or an ISO 8601 string (no zone means UTC)."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise _bad(param, "expected unix seconds or an ISO 8601 date-time.", "invalid_type")
    if isinstance(value, int | float):
        if value <= 0:
            raise _bad(param, "expected unix seconds or an ISO 8601 date-time.")
        return float(value)
    if isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise _bad(param, "expected unix seconds or an ISO 8601 date-time.") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=UTC)).timestamp()
    raise _bad(param, "expected unix seconds or an ISO 8601 date-time.", "invalid_type")


def _opt_str(v: Any, param: str, limit: int = 256) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str) or len(v) > limit:
        raise _bad(param, f"expected a string of at most {limit} characters.", "invalid_type")
    return v


def _opt_int(v: Any, param: str) -> int | None:
    if v is None:
        return None
    if isinstance(v, bool) or not isinstance(v, int):
        raise _bad(param, "expected an integer of at least 1.", "invalid_type")
    if v < 1:
        raise _bad(param, "expected an integer of at least 1.")
    return v


def validate_key_fields(body: Any, *, patch: bool) -> dict[str, Any]:
    """A create or PATCH body -> column values. 400 naming the first bad `param`."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    allowed = PATCH_FIELDS if patch else CREATE_FIELDS
    for k in body:
        if k not in allowed:
            raise InvalidRequest(f"Unrecognized request argument supplied: {k}", param=k, code="unknown_parameter")
    out: dict[str, Any] = {}
    for k, v in body.items():
        if k == "name":
            out[k] = _opt_str(v, k) or ""
        elif k == "models":
            if v is not None and (not isinstance(v, list) or len(v) > 1000
                                  or not all(isinstance(m, str) and m for m in v)):
                raise _bad(k, "expected null (every model) or an array of model names or globs.", "invalid_type")
            out[k] = v
        elif k in ("rpm", "tpm", "max_concurrency"):
            out[k] = _opt_int(v, k)
        elif k in ("budget_id", "source_id"):
            out[k] = _opt_str(v, k)
        elif k == "source_type":
            if v is not None and v not in SOURCE_TYPES:
                raise _bad(k, "expected 'application' or 'service'.")
            out[k] = v
        elif k == "expires_at":
            out[k] = parse_time(v, k)
        elif k == "metadata":
            if v is None:
                v = {}
            if not isinstance(v, dict):
                raise _bad(k, "expected an object.", "invalid_type")
            if len(orjson.dumps(v)) > 16384:
                raise _bad(k, "must be at most 16384 bytes of JSON.")
            out[k] = v
        elif k == "disabled":
            if not isinstance(v, bool):
                raise _bad(k, "expected a boolean.", "invalid_type")
            out[k] = v
    return out


def _ts(v: float | None) -> int | None:
    return int(v) if v is not None else None


def key_json(rec: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "id": rec.id, "object": "api_key", "name": rec.name, "key_prefix": rec.key_prefix, "models": rec.models,
        "rpm": rec.rpm, "tpm": rec.tpm, "max_concurrency": rec.max_concurrency, "budget_id": rec.budget_id,
        "source_id": rec.source_id, "source_type": rec.source_type, "metadata": rec.metadata,
        "expires_at": _ts(rec.expires_at), "disabled": rec.disabled, "revoked": rec.revoked_at is not None,
        "revoked_at": _ts(rec.revoked_at), "created_at": _ts(rec.created_at), "updated_at": _ts(rec.updated_at),
    }
    if rec.prev_hash and rec.prev_expires_at and rec.prev_expires_at > time.time():
        out["previous_key_expires_at"] = _ts(rec.prev_expires_at)
    if secret is not None:
        out["key"] = secret          # shown once; never stored, never logged
    return out


class KeyStore:
    def __init__(self, config: Config, ledger: Ledger | None = None) -> None:
        st = config.storage
        self.ledger = ledger or open_ledger(st.database)
        self.hasher = KeyHasher(config.server.secret)
        self.lookup = LedgerKeyLookup(self.ledger, self.hasher, ttl=st.key_cache_ttl)
        self.audit = AuditLog(self.ledger)
        self.invalidator = Invalidator(self.lookup, st.redis)

    async def start(self, *, background: bool = True) -> None:
        await self.ledger.connect()
        if background:
            self.audit.start()
            await self.invalidator.start()

    async def close(self) -> None:
        await self.invalidator.close()
        await self.audit.close()
        await self.ledger.close()

    async def _get(self, key_id: str) -> KeyRecord:
        rec = await self.ledger.get_key(key_id)
        if rec is None:
            raise NotFound(f"No API key with id '{key_id}'.", param="id")
        return rec

    async def create(self, body: Any, *, actor: str, ip: str | None) -> tuple[KeyRecord, str]:
        fields = validate_key_fields(body, patch=False)
        secret = new_secret()
        now = time.time()
        rec = KeyRecord(id=new_key_id(), key_hash=self.hasher.digest(secret), key_prefix=display_prefix(secret),
                        created_at=now, updated_at=now, **fields)
        await self.ledger.insert_key(rec)
        await self.audit.record("key.create", actor, target=rec.id, ip=ip,
                                detail={"fields": sorted(fields), "key_prefix": rec.key_prefix})
        return rec, secret

    async def get(self, key_id: str) -> KeyRecord:
        return await self._get(key_id)

    async def update(self, key_id: str, body: Any, *, actor: str, ip: str | None) -> KeyRecord:
        fields = validate_key_fields(body, patch=True)
        rec = await self._get(key_id)
        if rec.revoked_at is not None:
            raise InvalidRequest(f"API key '{key_id}' has been revoked and cannot be changed.", param="id")
        if fields:
            rec = await self.ledger.update_key(key_id, fields) or rec
        await self.invalidator.publish(key_id)
        await self.audit.record("key.update", actor, target=key_id, ip=ip, detail={"fields": sorted(fields)})
        return rec

    async def revoke(self, key_id: str, *, actor: str, ip: str | None) -> KeyRecord:
        rec = await self._get(key_id)
        if rec.revoked_at is None:
            rec = await self.ledger.update_key(key_id, {"revoked_at": time.time(), "prev_hash": None,
                                                        "prev_expires_at": None}) or rec
        await self.invalidator.publish(key_id)
        await self.audit.record("key.revoke", actor, target=key_id, ip=ip)
        return rec

    async def rotate(self, key_id: str, grace_period: Any, *, actor: str, ip: str | None) -> tuple[KeyRecord, str]:
        if grace_period is None:
            grace_period = 0
        if isinstance(grace_period, bool) or not isinstance(grace_period, int | float) \
                or not 0 <= grace_period <= MAX_GRACE:
            raise _bad("grace_period", f"expected seconds between 0 and {MAX_GRACE}.")
        rec = await self._get(key_id)
        if rec.revoked_at is not None:
            raise InvalidRequest(f"API key '{key_id}' has been revoked and cannot be rotated.", param="id")
        secret = new_secret()
        grace = float(grace_period)
        rec = await self.ledger.update_key(key_id, {
            "key_hash": self.hasher.digest(secret), "key_prefix": display_prefix(secret),
            "prev_hash": rec.key_hash if grace > 0 else None,
            "prev_expires_at": time.time() + grace if grace > 0 else None}) or rec
        await self.invalidator.publish(key_id)
        await self.audit.record("key.rotate", actor, target=key_id, ip=ip,
                                detail={"grace_period": grace, "key_prefix": rec.key_prefix})
        return rec, secret
