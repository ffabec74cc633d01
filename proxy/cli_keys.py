"""`llm-service keys create|list|revoke|rotate`: the admin API's key operations, straight on the ledger
named by the config (the same database the running proxies use). Changes are audited with actor `cli:<user>`."""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from proxy.config import Config
from proxy.errors import ProxyError
from proxy.keyservice import KeyStore, key_json


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:
        return "cli"


def _print_json(obj: Any) -> None:
    sys.stdout.write(orjson.dumps(obj, option=orjson.OPT_INDENT_2).decode() + "\n")


def _create_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {}
    if args.name is not None:
        body["name"] = args.name
    if args.models is not None:
        body["models"] = [m.strip() for m in args.models.split(",") if m.strip()]
    for f in ("rpm", "tpm", "max_concurrency", "budget_id", "source_id", "source_type"):
        if getattr(args, f) is not None:
            body[f] = getattr(args, f)
    if args.expires_at is not None:
        body["expires_at"] = float(args.expires_at) if args.expires_at.replace(".", "").isdigit() \
            else args.expires_at
    if args.metadata is not None:
        try:
            body["metadata"] = orjson.loads(args.metadata)
        except orjson.JSONDecodeError:
            raise SystemExit("error: --metadata must be a JSON object") from None
    return body


async def _create(store: KeyStore, args: argparse.Namespace) -> None:
    rec, secret = await store.create(_create_body(args), actor=_actor(), ip="local")
    _print_json(key_json(rec, secret))
    print("Store the key now: it is shown only once.", file=sys.stderr)


async def _list(store: KeyStore, args: argparse.Namespace) -> None:
    recs = await store.ledger.list_keys(limit=args.limit, after=None, include_revoked=args.all)
    if args.json:
        _print_json([key_json(r) for r in recs])
        return
    now = time.time()
    print(f"{'ID':<34} {'PREFIX':<12} {'STATUS':<9} {'NAME':<24} MODELS")
    for r in recs:
        status = ("revoked" if r.revoked_at else "disabled" if r.disabled
                  else "expired" if r.expires_at and r.expires_at <= now else "active")
        models = ",".join(r.models) if r.models is not None else "*"
        print(f"{r.id:<34} {r.key_prefix:<12} {status:<9} {r.name[:24]:<24} {models}")


async def _revoke(store: KeyStore, args: argparse.Namespace) -> None:
    rec = await store.revoke(args.id, actor=_actor(), ip="local")
    print(f"revoked {rec.id} ({rec.key_prefix}...)")


async def _rotate(store: KeyStore, args: argparse.Namespace) -> None:
    rec, secret = await store.rotate(args.id, args.grace_period, actor=_actor(), ip="local")
    _print_json(key_json(rec, secret))
    print("Store the new key now: it is shown only once.", file=sys.stderr)


async def _run(cfg: Config, op: Callable[[KeyStore, argparse.Namespace], Awaitable[None]],
               args: argparse.Namespace) -> None:
    store = KeyStore(cfg)
    await store.start(background=False)
    try:
        await op(store, args)
    finally:
        await store.close()


def add_parser(sub: Any, load: Callable[[str], Config]) -> None:
    p = sub.add_parser("keys", help="create, list, revoke and rotate virtual API keys")
    p.add_argument("--config", default="config.yaml")
    ks = p.add_subparsers(dest="keys_command", required=True)
    c = ks.add_parser("create", help="create a key and print its secret once")
    c.add_argument("--name")
    c.add_argument("--models", help="comma-separated model names or globs (default: every model)")
    c.add_argument("--rpm", type=int)
    c.add_argument("--tpm", type=int)
    c.add_argument("--max-concurrency", dest="max_concurrency", type=int)
    c.add_argument("--budget-id", dest="budget_id")
    c.add_argument("--source-id", dest="source_id")
    c.add_argument("--source-type", dest="source_type", choices=["application", "service"])
    c.add_argument("--expires-at", dest="expires_at", help="unix seconds or ISO 8601")
    c.add_argument("--metadata", help="JSON object")
    c.set_defaults(op=_create)
    ls = ks.add_parser("list", help="list keys (never their secrets)")
    ls.add_argument("--limit", type=int, default=1000)
    ls.add_argument("--all", action="store_true", help="include revoked keys")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(op=_list)
    r = ks.add_parser("revoke", help="revoke a key (takes effect on every replica within the cache TTL)")
    r.add_argument("id")
    r.set_defaults(op=_revoke)
    ro = ks.add_parser("rotate", help="issue a new secret for a key")
    ro.add_argument("id")
    ro.add_argument("--grace-period", dest="grace_period", type=float, default=0.0,
                    help="seconds the old secret keeps working")
    ro.set_defaults(op=_rotate)
    for sp in (c, ls, r, ro):        # `keys --config F create` and `keys create --config F` both work
        sp.add_argument("--config", default=argparse.SUPPRESS)

    def run(args: argparse.Namespace) -> int:
        cfg = load(args.config)
        try:
            asyncio.run(_run(cfg, args.op, args))
        except ProxyError as e:
            print(f"error: {e.message}", file=sys.stderr)
            return 2
        except RuntimeError as e:
            print(f"error: {e}", file=sys.stderr)
            return 1
        return 0

    p.set_defaults(func=run)
