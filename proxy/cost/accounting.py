"""The Cost Tracker's parts in one place: prices, tokenizer, usage writer, budgets, counters, alerts.

Built once per gateway on the ledger the key store opened; `start()` after the ledger connects,
`close()` before it closes (flushes every queued usage event: graceful shutdown loses none).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from proxy.config import Config, ModelConfig, Target, in_memory
from proxy.cost.alerts import Alerter
from proxy.cost.prices import Price, PriceTable
from proxy.cost.reserve import LocalReservations, RedisReservations, Reservations
from proxy.cost.tokens import Tokenizer
from proxy.routing.models import ModelCatalog
from proxy.store import Ledger
from proxy.store import budgets as budget_sql
from proxy.store.budgets import Budget
from proxy.store.usage import UsageWriter
from proxy.store.usage_process import ProcessUsageWriter

log = logging.getLogger("proxy.cost")


class Pricer:
    """A target's price: target `price` > model `price` > the shipped table. Memoised per target."""

    def __init__(self, config: Config, catalog: ModelCatalog, table: PriceTable | None = None) -> None:
        self.catalog = catalog
        self.table = table or PriceTable.load()
        self._memo: dict[tuple[str, str, str], Price | None] = {}

    def model(self, name: str) -> ModelConfig | None:
        return self.catalog.resolve(name) if name in self.catalog else None

    def price(self, model_name: str, target: Target | None) -> Price | None:
        if target is None:
            return None
        k = (model_name, target.provider, target.model)
        if k in self._memo:
            return self._memo[k]
        p: Price | None = None
        if target.price is not None:
            p = Price.from_config(target.price)
        else:
            m = self.model(model_name)
            own = next((t for t in m.targets if t.provider == target.provider and t.model == target.model
                        and t.price is not None), None) if m else None
            if own is not None and own.price is not None:
                p = Price.from_config(own.price)
            elif m is not None and m.price is not None:
                p = Price.from_config(m.price)
            else:
                p = self.table.lookup(target.provider, target.model)
        if len(self._memo) < 10_000:
            self._memo[k] = p
        return p

    def dearest(self, model_name: str) -> list[Price | None]:
        """Every target's price of a model (a reservation must cover whichever target answers)."""
        m = self.model(model_name)
        return [self.price(model_name, t) for t in m.targets] if m else []


class BudgetBook:
    """Budget definitions, cached for `ttl` seconds (an admin change applies everywhere within it)."""

    def __init__(self, ledger: Ledger, ttl: float) -> None:
        self.ledger, self.ttl = ledger, ttl
        self._cache: dict[str, tuple[float, Budget | None]] = {}

    async def get(self, budget_id: str) -> Budget | None:
        hit = self._cache.get(budget_id)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        b = await budget_sql.get(self.ledger, budget_id)
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[budget_id] = (now + self.ttl, b)
        return b

    def forget(self, budget_id: str) -> None:
        self._cache.pop(budget_id, None)


def usage_writer(config: Config, ledger: Ledger) -> UsageWriter | ProcessUsageWriter:
    """The writer process for a ledger another process can open (a file, PostgreSQL), else inline."""
    cfg, url = config.accounting, config.storage.database
    if cfg.writer == "inline" or (cfg.writer == "auto" and in_memory(url)):
        return UsageWriter(ledger, interval=cfg.flush_interval, batch=cfg.batch_size, max_queue=cfg.max_queue)
    logs = config.telemetry.logs
    return ProcessUsageWriter(ledger, url, interval=cfg.flush_interval, batch=cfg.batch_size,
                              max_queue=cfg.max_queue, log_level=logs.level or config.server.log_level,
                              log_format=logs.format)


class Accounting:
    def __init__(self, config: Config, ledger: Ledger, catalog: ModelCatalog,
                 reservations: Reservations | None = None) -> None:
        self.config = config
        self.cfg = config.accounting
        self.bcfg = config.budgets
        self.ledger = ledger
        self.pricer = Pricer(config, catalog)
        self.tokenizer = Tokenizer(heuristic=self.cfg.tokenizer == "heuristic")
        self.writer = usage_writer(config, ledger)
        self.budgets = BudgetBook(ledger, self.bcfg.cache_ttl)
        if reservations is None:
            redis = config.storage.redis
            reservations = RedisReservations(redis, self.bcfg.redis_prefix) if redis else LocalReservations()
        self.reservations = reservations
        self.alerter = Alerter(self.bcfg.alerts, ledger)
        self.providers = {name: p.type for name, p in config.providers.items()}

    def start(self) -> None:
        self.writer.start()

    async def close(self) -> None:
        await self.writer.close()
        await self.alerter.close()
        await self.reservations.close()

    def stats(self) -> dict[str, Any]:
        w = self.writer
        return {"written": w.written, "pending": w.pending, "dropped": w.dropped, "write_failures": w.failures,
                "alerts_failed": self.alerter.failed,
                "alerts_unrecorded": self.alerter.record_failures}
