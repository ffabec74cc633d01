"""Prices: the shipped table (proxy/data/prices.yaml) plus config overrides -> exact cost of a Usage.

Money is integer nano-dollars (1e-9 USD) everywhere it is stored or summed: exact to the cent, and per
token exact for any price with up to three decimals per million. Arithmetic is Decimal, rounded once per
event (half-even). An unknown price is `None` (recorded as unpriced), never 0.
"""

from __future__ import annotations

import datetime as dt
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any

import msgspec
import yaml

from proxy.context import Usage
from proxy.cost.config import PriceConfig

NANOS_PER_USD = 1_000_000_000
_PER_TOKEN = Decimal(NANOS_PER_USD) / Decimal(1_000_000)      # USD-per-million -> nanos-per-token
TABLE_PATH = Path(__file__).resolve().parent.parent / "data" / "prices.yaml"


def _dec(v: Any) -> Decimal:
    return Decimal(str(v))


class Price(msgspec.Struct, frozen=True, kw_only=True):
    """Nano-dollars per token (Decimal: 0.15 USD/M = 150 nanos per token)."""

    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    valid_from: dt.date = dt.date(1970, 1, 1)
    # (input, cached_input, cache_write, output) as ints when each is a whole number of nanos per token
    # (most prices): cost() is then exact in integer arithmetic, without Decimal.
    whole: tuple[int, int, int, int] | None = None

    @classmethod
    def per_million(cls, input: Any, output: Any = 0, cached_input: Any = None, cache_write: Any = None,
                    valid_from: dt.date | None = None) -> Price:
        i = _dec(input) * _PER_TOKEN
        o = _dec(output or 0) * _PER_TOKEN
        c = _dec(cached_input) * _PER_TOKEN if cached_input is not None else i
        w = _dec(cache_write) * _PER_TOKEN if cache_write is not None else i
        rates = (i, c, w, o)
        whole = (int(i), int(c), int(w), int(o)) if all(r == r.to_integral_value() for r in rates) else None
        return cls(input=i, output=o, cached_input=c, cache_write=w, valid_from=valid_from or dt.date(1970, 1, 1),
                   whole=whole)

    @classmethod
    def from_config(cls, p: PriceConfig) -> Price:
        return cls.per_million(p.input, p.output, p.cached_input, p.cache_write)

    def cost(self, usage: Usage) -> int:
        """Nano-dollars for one call: uncached prompt, cache reads, cache writes and completion tokens."""
        cached = min(usage.cached_tokens, usage.prompt_tokens)
        written = min(usage.cache_write_tokens, usage.prompt_tokens - cached)
        fresh = usage.prompt_tokens - cached - written
        whole = self.whole
        if whole is not None:                    # whole nanos per token: exact in integers, no Decimal
            i, c, w, o = whole
            return fresh * i + cached * c + written * w + usage.completion_tokens * o
        total = (fresh * self.input + cached * self.cached_input + written * self.cache_write
                 + usage.completion_tokens * self.output)
        return int(total.to_integral_value(rounding=ROUND_HALF_EVEN))

    def worst_case(self, prompt_tokens: int, completion_tokens: int) -> int:
        """An upper bound for reservations: every prompt token at the dearest input rate, rounded up."""
        top = max(self.input, self.cached_input, self.cache_write)
        total = prompt_tokens * top + completion_tokens * self.output
        return int(total.to_integral_value(rounding="ROUND_CEILING"))


def usd(nanos: int | None) -> float | None:
    """For JSON answers and headers: nano-dollars -> USD (a float is exact enough to show)."""
    return None if nanos is None else nanos / NANOS_PER_USD


def usd_text(nanos: int) -> str:
    """Exact decimal text, e.g. 1234 nanos -> '0.000001234', 1_500_000_000 -> '1.5'."""
    sign = "-" if nanos < 0 else ""
    whole, frac = divmod(abs(nanos), NANOS_PER_USD)
    return f"{sign}{whole}.{frac:09d}".rstrip("0") if frac else f"{sign}{whole}"


def usd_to_nanos(amount: Any) -> int:
    return int((_dec(amount) * NANOS_PER_USD).to_integral_value(rounding=ROUND_HALF_EVEN))


class PriceTable:
    """name -> periods sorted by valid_from. `lookup` resolves prefixes and dated snapshot names."""

    def __init__(self, models: dict[str, list[Price]], snapshot: str = "") -> None:
        self.models = {k: sorted(v, key=lambda p: p.valid_from) for k, v in models.items()}
        self.snapshot = snapshot
        self._by_len = sorted(self.models, key=len, reverse=True)
        self._memo: dict[tuple[str, str], str | None] = {}

    @classmethod
    def load(cls, path: Path = TABLE_PATH) -> PriceTable:
        raw = yaml.safe_load(path.read_text()) or {}
        models: dict[str, list[Price]] = {}
        for name, periods in (raw.get("models") or {}).items():
            out = []
            for p in periods:
                vf = p.get("valid_from")
                if isinstance(vf, str):
                    vf = dt.date.fromisoformat(vf)
                out.append(Price.per_million(p["input"], p.get("output", 0), p.get("cached_input"),
                                             p.get("cache_write"), vf))
            models[str(name)] = out
        return cls(models, str(raw.get("snapshot", "")))

    def _key(self, provider: str, model: str) -> str | None:
        memo = self._memo.get((provider, model), "")
        if memo != "":
            return memo
        found: str | None = None
        bare = model.split("/", 1)[1] if "/" in model else model
        for cand in (f"{provider}/{model}", model, bare):
            if cand in self.models:
                found = cand
                break
        if found is None:
            for cand_model in (f"{provider}/{model}", model, bare):
                found = next((k for k in self._by_len if cand_model.startswith(k + "-")), None)
                if found:
                    break
        if len(self._memo) < 10_000:
            self._memo[(provider, model)] = found
        return found

    def lookup(self, provider: str, model: str, on: dt.date | None = None) -> Price | None:
        key = self._key(provider, model)
        if key is None:
            return None
        periods = self.models[key]
        on = on or dt.datetime.now(dt.UTC).date()
        chosen = None
        for p in periods:
            if p.valid_from <= on:
                chosen = p
        return chosen or periods[0]
