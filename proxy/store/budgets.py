"""Budget definitions in the ledger: id, amount (nano-dollars), period, scope, hard or soft."""

from __future__ import annotations

import time
from typing import Any, Literal

import msgspec

from proxy.store import Ledger

Period = Literal["daily", "weekly", "monthly", "total"]
Scope = Literal["key", "source", "team", "global"]
PERIODS = ("daily", "weekly", "monthly", "total")
SCOPES = ("key", "source", "team", "global")


class Budget(msgspec.Struct, frozen=True, kw_only=True):
    id: str
    amount_nanos: int
    period: str = "monthly"
    scope: str = "global"       # global: one pool; key/source/team: a pool per key, source or team
    hard: bool = True           # hard: refuse calls that could cross it; soft: alert only
    name: str = ""
    created_at: float = 0.0
    updated_at: float = 0.0


COLS = ("id", "name", "amount_nanos", "period", "scope", "hard", "created_at", "updated_at")
_SELECT = f"SELECT {', '.join(COLS)} FROM budgets"


def _from_row(r: tuple[Any, ...]) -> Budget:
    d = dict(zip(COLS, r, strict=True))
    d["hard"] = bool(d["hard"])
    d["amount_nanos"] = int(d["amount_nanos"])
    return Budget(**d)


async def insert(ledger: Ledger, b: Budget) -> None:
    await ledger.execute(f"INSERT INTO budgets ({', '.join(COLS)}) VALUES ({', '.join('?' * len(COLS))})",
                         b.id, b.name, b.amount_nanos, b.period, b.scope, 1 if b.hard else 0,
                         b.created_at, b.updated_at)


async def get(ledger: Ledger, budget_id: str) -> Budget | None:
    rows = await ledger.fetch(f"{_SELECT} WHERE id = ?", budget_id)
    return _from_row(rows[0]) if rows else None


async def list_all(ledger: Ledger, *, limit: int, after: str | None) -> list[Budget]:
    if after is not None:
        rows = await ledger.fetch(f"{_SELECT} WHERE id > ? ORDER BY id LIMIT ?", after, limit)
    else:
        rows = await ledger.fetch(f"{_SELECT} ORDER BY id LIMIT ?", limit)
    return [_from_row(r) for r in rows]


async def update(ledger: Ledger, budget_id: str, fields: dict[str, Any]) -> Budget | None:
    if fields:
        cols = [*fields, "updated_at"]
        values = [(1 if v else 0) if c == "hard" else v for c, v in fields.items()] + [time.time()]
        await ledger.execute(f"UPDATE budgets SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                             *values, budget_id)
    return await get(ledger, budget_id)


async def delete(ledger: Ledger, budget_id: str) -> None:
    await ledger.execute("DELETE FROM budgets WHERE id = ?", budget_id)


class FiredAlert(msgspec.Struct, frozen=True, kw_only=True):
    """A threshold a budget's pool crossed in a period (recorded once, however many replicas saw it)."""

    budget_id: str
    scope_value: str             # '*' for a global budget; else the key id, source id or team
    period_start: int            # unix seconds (UTC) the period began
    threshold: float             # percent of the amount
    spent_nanos: int             # settled spend when it fired
    fired_at: float


_ALERT_COLS = ("budget_id", "scope_value", "period_start", "threshold", "spent_nanos", "fired_at")


async def record_alerts(ledger: Ledger, alerts: list[FiredAlert]) -> None:
    if alerts:
        await ledger.executemany(
            f"INSERT INTO budget_alerts ({', '.join(_ALERT_COLS)}) VALUES ({', '.join('?' * len(_ALERT_COLS))}) "
            "ON CONFLICT (budget_id, period_start, scope_value, threshold) DO NOTHING",
            [(a.budget_id, a.scope_value, int(a.period_start), float(a.threshold), int(a.spent_nanos),
              float(a.fired_at)) for a in alerts])


async def alerts_in_period(ledger: Ledger, budget_id: str, start: float) -> list[FiredAlert]:
    """The period's alerts in the order they fired (the primary key's prefix: an indexed read)."""
    rows = await ledger.fetch(f"SELECT {', '.join(_ALERT_COLS)} FROM budget_alerts "
                              "WHERE budget_id = ? AND period_start = ? ORDER BY fired_at, threshold",
                              budget_id, int(start))
    return [FiredAlert(budget_id=r[0], scope_value=r[1], period_start=int(r[2]), threshold=float(r[3]),
                       spent_nanos=int(r[4]), fired_at=float(r[5])) for r in rows]
