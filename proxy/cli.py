"""`llm-service serve|check-config`; also `python -m proxy`."""

from __future__ import annotations

import argparse
import asyncio
import logging
import secrets
import signal
import sys

import msgspec

from proxy import __version__
from proxy.config import Config, ConfigError, load


def _load_or_exit(path: str) -> Config:
    try:
        return load(path)
    except ConfigError as e:
        print(f"config error: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def cmd_check_config(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.file)
    print(f"{args.file}: OK ({len(cfg.providers)} providers, {len(cfg.models)} models)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    cfg = _load_or_exit(args.config)
    server = cfg.server
    overrides: dict = {}
    if args.host:
        overrides["host"] = args.host
    if args.port:
        overrides["port"] = args.port
    if not server.master_key:
        key = "sk-dev-" + secrets.token_urlsafe(24)
        overrides["master_key"] = key
        # Printed once, to the terminal only: the gateway never runs without a key.
        print(f"No master key configured (server.master_key / LLM_SERVICE_MASTER_KEY).\n"
              f"Generated a development master key for this run:\n\n    {key}\n", flush=True)
    if overrides:
        cfg = msgspec.structs.replace(cfg, server=msgspec.structs.replace(server, **overrides))
    logging.basicConfig(level=cfg.server.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        import uvloop
        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(cfg))
    return 0


async def serve(cfg: Config) -> None:
    from aiohttp import web

    from proxy.app import build_app

    app = build_app(cfg)
    runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, cfg.server.host, cfg.server.port, backlog=1024)
    await site.start()
    print(f"llm-service {__version__} listening on http://{cfg.server.host}:{cfg.server.port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="llm-service", description="OpenAI-compatible LLM gateway")
    parser.add_argument("--version", action="version", version=f"llm-service {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("serve", help="run the gateway")
    p.add_argument("--config", default="config.yaml")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=cmd_serve)
    p = sub.add_parser("check-config", help="validate a config file and say what is wrong")
    p.add_argument("file")
    p.set_defaults(func=cmd_check_config)
    args = parser.parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
