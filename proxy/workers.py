"""`llm-service serve --workers N`: N processes on one port, each with its own event loop.

Python runs one event loop per core at most; on a bigger host N workers use N cores. Each worker binds
the port itself with SO_REUSEPORT, so the kernel spreads new connections across them (no shared accept
queue, no thundering herd). Each worker is a whole gateway: its own upstream pools, usage writer process
and span exporter process (one per worker is the simplest that works: SQLite in WAL mode and PostgreSQL
take several writers, and a request id is unique, so nothing is written twice).

The parent holds the port (bound with SO_REUSEPORT, never listening, so it gets no connections: it only
makes `--port 0` pick one port for all and makes a port in use fail once, clearly), forwards SIGTERM
and SIGINT to every worker (each drains its calls for `routing.drain_seconds`, flushes its ledger
writer and exits) and waits for them. A worker that dies while serving is started again; one that dies
within STARTUP_SECONDS of its start stops them all with its exit status (a broken start-up would only
loop: a config error is 2, as with one process).

State kept in a process (rate-limit counters, the response cache, budget counters) would diverge between
workers: without `storage.redis`, N > 1 is refused unless `--workers-allow-local-state` accepts that.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import logging
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable

import msgspec

from proxy.config import Config

log = logging.getLogger("proxy.workers")
SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD}
STARTUP_SECONDS = 5.0        # a worker that dies sooner after its start stops the whole server
KILL_GRACE = 15.0            # beyond drain_seconds, before a worker that will not exit is killed
RESTART_PAUSE = 1.0
PR_SET_PDEATHSIG = 1


class WorkersError(Exception):
    """A `--workers` setting that cannot run; the message says why and what to do."""


class PortInUse(WorkersError):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workers", default="1", help="processes serving the port (SO_REUSEPORT); 'auto' = cores")
    p.add_argument("--workers-allow-local-state", action="store_true",
                   help="allow --workers > 1 without storage.redis (limits, cache, budgets per worker)")


def count_or_exit(cfg: Config, args: argparse.Namespace) -> int:
    try:
        n = worker_count(args.workers)
        check_local_state(cfg, n, args.workers_allow_local_state)
    except WorkersError as e:
        print(f"llm-service: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    return n


def worker_count(value: str) -> int:
    """`auto` = the cores this process may run on; else a positive integer."""
    if value == "auto":
        return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        n = int(value)
    except ValueError:
        n = 0
    if n < 1:
        raise WorkersError(f"--workers must be a positive integer or 'auto', got {value!r}")
    return n


def check_local_state(cfg: Config, n: int, allow_local_state: bool) -> None:
    if n > 1 and not cfg.storage.redis and not allow_local_state:
        raise WorkersError(
            f"--workers {n} needs storage.redis (REDIS_URL): without it each worker keeps its own rate-limit "
            "counters, response cache and budget counters, so limits and budgets would allow up to "
            f"{n}x what is configured. Set storage.redis, or pass --workers-allow-local-state to accept "
            "per-worker state.")


def reserve_port(host: str, port: int) -> tuple[list[socket.socket], int]:
    """Bind (not listen) every address of host:port with SO_REUSEPORT; port 0 picks one for all."""
    socks: list[socket.socket] = []
    try:
        for family, type_, proto, _, addr in socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                                                flags=socket.AI_PASSIVE):
            s = socket.socket(family, type_, proto)
            socks.append(s)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            s.bind((addr[0], port, *addr[2:]))
            port = port or s.getsockname()[1]
    except OSError as e:
        for s in socks:
            s.close()
        if e.errno == errno.EADDRINUSE:
            raise PortInUse(f"port {port} is in use") from None       # as `serve` says it with one process
        raise WorkersError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return socks, port


def serve_workers(cfg: Config, n: int, run: Callable[[Config], None]) -> int:
    """Fork `n` workers running `run(cfg)` (which must bind with reuse_port), forward stop signals, wait.
    Returns the exit status: 0 when every worker exited cleanly after a stop signal."""
    try:
        reserved, port = reserve_port(cfg.server.host, cfg.server.port)
    except PortInUse as e:
        print(str(e), file=sys.stderr, flush=True)
        return 1
    except WorkersError as e:
        print(f"llm-service: {e}", file=sys.stderr)
        return 2
    cfg = msgspec.structs.replace(cfg, server=msgspec.structs.replace(cfg.server, port=port))
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)      # taken with sigtimedwait below
    started: dict[int, float] = {}                          # pid -> start time
    try:
        for _ in range(n):
            started[_fork(cfg, run, reserved)] = time.monotonic()
        print(f"llm-service: {n} workers on http://{cfg.server.host}:{port} (pids "
              f"{' '.join(map(str, started))})", flush=True)
        return _supervise(cfg, run, reserved, started)
    finally:
        for s in reserved:
            s.close()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def _supervise(cfg: Config, run: Callable[[Config], None], reserved: list[socket.socket],
               started: dict[int, float]) -> int:
    status = 0
    stop_at: float | None = None                            # set once a stop signal came
    while started:
        info = signal.sigtimedwait(SIGNALS, 0.5)
        if info is not None and info.si_signo != signal.SIGCHLD and stop_at is None:
            stop_at = time.monotonic() + cfg.routing.drain_seconds + KILL_GRACE
            log.info("stopping %d workers (signal %d)", len(started), info.si_signo)
            _signal_all(started, signal.SIGTERM)
        for pid, code in _reap():
            since = started.pop(pid, None)
            if since is None:
                continue
            if stop_at is not None:
                status = status or (0 if code == 0 else 1)
            elif time.monotonic() - since < STARTUP_SECONDS:
                print(f"llm-service: worker {pid} exited with status {code} at start-up; stopping",
                      file=sys.stderr, flush=True)
                status, stop_at = code or 1, time.monotonic() + cfg.routing.drain_seconds + KILL_GRACE
                _signal_all(started, signal.SIGTERM)
            else:
                log.error("worker %d exited with status %d while serving; starting another", pid, code)
                time.sleep(RESTART_PAUSE)
                started[_fork(cfg, run, reserved)] = time.monotonic()
        if stop_at is not None and time.monotonic() > stop_at and started:
            log.error("%d workers still running after the drain; killing them", len(started))
            _signal_all(started, signal.SIGKILL)
            status, stop_at = 1, time.monotonic() + 3600
    return status


def _signal_all(pids: dict[int, float], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _reap() -> list[tuple[int, int]]:
    out: list[tuple[int, int]] = []
    while True:
        try:
            pid, st = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return out
        if pid == 0:
            return out
        out.append((pid, os.waitstatus_to_exitcode(st)))


def _die_with_parent(parent: int) -> None:
    """A parent killed with SIGKILL forwards nothing: the kernel then sends the worker SIGTERM (Linux
    PR_SET_PDEATHSIG), so it drains and exits instead of serving on, orphaned."""
    with contextlib.suppress(Exception):
        import ctypes
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:                  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _fork(cfg: Config, run: Callable[[Config], None], reserved: list[socket.socket]) -> int:
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    code = 1
    try:                                        # the worker: never returns into the parent's code
        for s in reserved:
            s.close()
        _die_with_parent(parent)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        run(cfg)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        logging.shutdown()
        with contextlib.suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)
