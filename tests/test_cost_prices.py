"""Prices: the shipped table, lookups, overrides and exact Decimal costs; token counting offline."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import msgspec

from proxy.config import Target
from proxy.context import Usage
from proxy.cost.accounting import Pricer
from proxy.cost.prices import Price, PriceTable, usd_text, usd_to_nanos
from proxy.cost.tokens import Tokenizer, prompt_upper_bound, streamed_text
from proxy.routing.models import ModelCatalog
from tests.conftest import make_config


def test_table_lookup_prefixes_dates_and_hosts():
    t = PriceTable.load()
    assert t.snapshot
    p = t.lookup("openai", "gpt-4o-mini-2024-07-18")          # dated snapshot -> gpt-4o-mini, not gpt-4o
    assert p is not None and p.input == 150 and p.output == 600 and p.cached_input == 75
    old = t.lookup("openai", "gpt-4o", dt.date(2024, 6, 1))
    new = t.lookup("openai", "gpt-4o", dt.date(2025, 1, 1))
    assert old is not None and new is not None and old.input == 5000 and new.input == 2500
    assert t.lookup("openrouter", "anthropic/claude-3-5-sonnet-20241022") is not None
    assert t.lookup("groq", "llama-3.3-70b-versatile") is not None
    assert t.lookup("other", "llama-3.3-70b-versatile") is None       # only priced on the groq host
    assert t.lookup("local", "mock") is None                          # unknown: unpriced, not free


def test_cost_is_exact_and_prices_cache_reads():
    p = Price.per_million(input="0.15", output="0.60", cached_input="0.075")
    u = Usage(prompt_tokens=1_000_001, completion_tokens=333_333, cached_tokens=1)
    # 1_000_000 x 150 + 1 x 75 + 333_333 x 600 nanos
    assert p.cost(u) == 150_000_000 + 75 + 199_999_800
    assert usd_text(p.cost(u)) == "0.349999875"
    anth = Price.per_million(input=3, output=15, cached_input="0.30", cache_write="3.75")
    assert anth.cost(Usage(prompt_tokens=100, cached_tokens=40, cache_write_tokens=50, completion_tokens=10)) == \
        10 * 3000 + 40 * 300 + 50 * 3750 + 10 * 15000
    assert usd_to_nanos("0.0008") == 800_000
    assert p.worst_case(10, 10) == 10 * 150 + 10 * 600


def test_overrides_beat_the_table():
    cfg = make_config(providers={"openai": {"type": "openai", "base_url": "http://127.0.0.1:9/v1"}},
                      models=[{"name": "a", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}],
                               "price": {"input": 1, "output": 2}},
                              {"name": "b", "targets": [{"provider": "openai", "model": "gpt-4o-mini",
                                                         "price": {"input": 3, "output": 4}}]},
                              {"name": "c", "targets": [{"provider": "openai", "model": "gpt-4o-mini"}]},
                              {"name": "d", "targets": [{"provider": "openai", "model": "my-finetune"}]}])
    pr = Pricer(cfg, ModelCatalog(cfg.models))
    t = Target(provider="openai", model="gpt-4o-mini")
    a, b, c = pr.price("a", t), pr.price("b", cfg.models[1].targets[0]), pr.price("c", t)
    assert a is not None and a.input == 1000 and a.output == 2000
    assert b is not None and b.input == 3000
    assert c is not None and c.input == 150
    assert pr.price("d", Target(provider="openai", model="my-finetune")) is None


def test_tokenizer_counts_offline_and_bounds():
    tok = Tokenizer()
    n = tok.count("gpt-4o", "Hello world, how are you doing today?")
    assert 5 <= n <= 12                                          # o200k, not the chars/4 heuristic
    assert tok.count("claude-3-haiku", "abcdefgh") == 2            # heuristic: ceil(chars / 4)
    body = {"messages": [{"role": "user", "content": "héllo wörld " * 20}]}
    assert prompt_upper_bound(body, "chat.completions") >= tok.count_prompt("gpt-4o", body, "chat.completions")
    sse = [b'data: {"choices":[{"delta":{"content":"Hel"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"lo \\"x\\""}}]}\n\n']
    assert streamed_text(sse) == 'Hello "x"'
    spaced = [b'data: {"choices": [{"delta": {"content": "tok "}}]}\n\ndata: {"choices": [{"del',
              b'ta": {"content": "two"}}]}\n\ndata: {"choices": [{"delta": {"tool_calls": [{"function": '
              b'{"arguments": "{}"}}]}}]}\n\ndata: [DONE]\n\n']
    assert streamed_text(spaced) == "tok two{}"            # any spacing, an event split across chunks


def test_whole_nano_rates_cost_the_same_in_integers_as_in_decimal():
    u = Usage(prompt_tokens=1_234_567, completion_tokens=89_012, cached_tokens=4_567, cache_write_tokens=321)
    fast = Price.per_million(2.5, 10, cached_input=1.25, cache_write=3.75)
    assert fast.whole == (2500, 1250, 3750, 10000)
    slow = msgspec.structs.replace(fast, whole=None)              # the Decimal path, same rates
    assert fast.cost(u) == slow.cost(u) == 1_229_679 * 2500 + 4_567 * 1250 + 321 * 3750 + 89_012 * 10000
    assert Price.per_million(0.0375, 0.15).whole is None          # 37.5 nanos a token: Decimal, half-even
    assert Price.per_million(0.0375, 0.15).cost(Usage(prompt_tokens=3)) == 112       # 112.5 -> 112
    for nanos in (0, 1, 16_000, 1_234, 10**9, 15 * 10**8, 12_345_678_901_234, -5):
        assert usd_text(nanos) == format(Decimal(nanos) / 10**9, "f")
