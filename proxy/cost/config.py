"""Config sections for cost accounting and budgets (`accounting:`, `budgets:`, `models[].price`).

Kept apart from proxy/config.py so the accounting code owns its knobs; config.py only references them.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

_Rate = Annotated[float, msgspec.Meta(ge=0)]    # a negative price would pay the caller for each token


class PriceConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """USD per million tokens. Overrides the shipped price table for one model (or one target)."""

    input: _Rate
    output: _Rate = 0.0
    cached_input: _Rate | None = None       # prompt tokens read from the provider's cache (default: input)
    cache_write: _Rate | None = None        # prompt tokens written to the provider's cache (default: input)


class AccountingConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    """Usage events in the ledger, written by a batched writer off the request path."""

    enabled: bool = True
    flush_interval: float = 0.2             # seconds between ledger writes (an event is readable within ~this)
    batch_size: int = 500                   # a write happens early once this many events wait
    max_queue: int = 100_000                # events kept in memory while the ledger is unreachable
    # process: a child process writes the ledger (the proxy's event loop never shares the GIL with it);
    # inline: the proxy writes it itself; auto: process, except for an in-memory SQLite ledger.
    writer: Literal["auto", "process", "inline"] = "auto"
    tokenizer: Literal["auto", "heuristic"] = "auto"   # auto: bpe-openai for OpenAI models, else chars/4


class AlertsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    webhook_url: str = ""                   # POSTed a JSON event per crossing; empty: log line + ledger row only
    thresholds: tuple[float, ...] = (50.0, 80.0, 100.0)   # percent of the budget's amount
    timeout: float = 5.0                    # seconds per webhook try
    max_tries: int = 5                      # tries with exponential backoff before giving up (logged)
    headers: dict[str, str] = {}            # e.g. an Authorization header for the receiver


class BudgetsConfig(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    enabled: bool = True
    default_max_tokens: int = 4096          # completion tokens reserved when a request sets no max_tokens
    cap_max_tokens: bool = True             # under a hard budget, send that cap upstream so it is a true bound
    cache_ttl: float = 1.0                  # seconds a budget definition is cached (admin changes apply within)
    redis_prefix: str = "llm:budget:"       # counters in Redis (storage.redis) when several replicas share
    alerts: AlertsConfig = AlertsConfig()
