"""Hourly rollups: what a batch adds (and a replay does not), the backfill rebuilding the same rows, and
/v1/usage/summary cutting days in a time zone, where single days add up to the multi-day total."""

from __future__ import annotations

import random
import subprocess
import sys
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest

from proxy.store import open_ledger, rollups
from proxy.store.usage import UsageEvent, write_events
from tests.conftest import make_config
from tests.cost_helpers import request
from tests.graphql_helpers import codes, gql
from tests.keys_helpers import ledger_url  # noqa: F401  (fixture: SQLite file, and PostgreSQL)

T0 = datetime(2026, 10, 28, tzinfo=ZoneInfo("UTC")).timestamp()   # spans the end of US/EU summer time
DAYS = 7


def _event(i: int, ts: float, **kw) -> UsageEvent:
    base = dict(request_id=f"r{i}", ts=ts, day="x", key_id=kw.pop("key_id", "k1"), model=kw.pop("model", "m"),
                provider="p", prompt_tokens=10, completion_tokens=5, cost_nanos=1000, latency_ms=120.0,
                status=200)
    base.update(kw)
    return UsageEvent(**base)


def _events(n: int, seed: int = 7) -> list[UsageEvent]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        out.append(_event(i, T0 + rnd.uniform(0, DAYS * 86400), key_id=rnd.choice(["k1", "k2", None]),
                          model=rnd.choice(["a", "b"]), prompt_tokens=rnd.randint(1, 100),
                          completion_tokens=rnd.randint(0, 50), cost_nanos=rnd.choice([None, rnd.randint(1, 10**6)]),
                          latency_ms=rnd.choice([5.0, 100.0, 100.5, 900.0, 70_000.0]),
                          status=rnd.choice([200, 200, 200, 429, 502]), cached=rnd.random() < 0.2))
    return out


async def _rollup_rows(ledger) -> dict[str, list[tuple]]:
    out = {}
    for t in rollups.TABLES:
        rows = await ledger.fetch(f"SELECT {', '.join(t.cols)} FROM {t.name} ORDER BY hour, {', '.join(t.dims)}")
        out[t.name] = [tuple(round(v, 6) if isinstance(v, float) else v for v in r) for r in rows]
    return out


async def test_a_batch_adds_to_its_hours_and_a_replay_adds_nothing(ledger_url):  # noqa: F811
    ledger = open_ledger(ledger_url)
    await ledger.connect()
    try:
        hour = int(T0)
        batch = [_event(1, T0 + 10, latency_ms=50.0),
                 _event(2, T0 + 20, latency_ms=300.0, status=502, cost_nanos=None),
                 _event(3, T0 + 3599, latency_ms=99_999.0, cached=True, saved_nanos=7, cached_tokens=4),
                 _event(4, T0 + 3600, latency_ms=100.0, estimated=True),          # the next hour
                 _event(5, T0 + 30, key_id=None, budget_id="b")]                   # other dimensions
        await write_events(ledger, batch)
        await write_events(ledger, batch[:3])                                     # a replayed batch
        rows = await rollups.read(ledger, rollups.RollupQuery(), "hour")
        assert [h for h, _ in rows] == [hour, hour + 3600]
        first = rows[0][1]
        assert (first.requests, first.errors, first.prompt_tokens, first.completion_tokens) == (4, 1, 40, 20)
        assert (first.cost_nanos, first.unpriced, first.cache_hits, first.saved_nanos) == (3000, 1, 1, 7)
        assert first.cached_tokens == 4 and first.latency_ms_sum == 50 + 300 + 99_999 + 120
        assert first.latency_buckets == [1, 1, 1, 0, 0, 0, 0, 0, 0, 1]          # 50|120, 300, >60 s
        assert rows[1][1].latency_buckets[0] == 1 and rows[1][1].estimated == 1   # 100 ms: bound inclusive
        by_key = dict(await rollups.read(ledger, rollups.RollupQuery(), "key"))
        assert by_key[None].requests == 1 and by_key["k1"].requests == 4
        only = await rollups.read(ledger, rollups.RollupQuery(key_id="", budget_id="b"), "total")
        assert [t.requests for _, t in only] == [1]
        assert rollups.table_for(rollups.RollupQuery(), "hour").name == "usage_rollups_model"
        assert rollups.table_for(rollups.RollupQuery(key_id="k1"), "hour").name == "usage_rollups_key"
        assert rollups.table_for(rollups.RollupQuery(key_id="k1"), "model").name == "usage_rollups"
        by_model = dict(await rollups.read(ledger, rollups.RollupQuery(), "model"))
        assert by_model["m"].requests == 5 and by_model["m"].latency_buckets == [2, 1, 1, 0, 0, 0, 0, 0, 0, 1]

        # The backfill rebuilds exactly what the writer added, from the raw events.
        more = _events(300)
        for i in range(0, len(more), 100):
            await write_events(ledger, more[i:i + 100])
        written = await _rollup_rows(ledger)
        full = written["usage_rollups"]
        for t in rollups.NARROW:                          # the narrow tables hold the full one's sums
            assert written[t.name] == sorted(rollups.project(full, t))
        assert await rollups.backfill(ledger) == len(full)
        assert await _rollup_rows(ledger) == written
        for t in rollups.TABLES:
            await ledger.execute(f"DELETE FROM {t.name}")
        assert await rollups.backfill(ledger, since=T0 + 86400) < len(full)      # only the later hours
        await rollups.backfill(ledger)
        assert await _rollup_rows(ledger) == written
    finally:
        await ledger.close()


def test_backfill_command(tmp_path):
    db = tmp_path / "l.db"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"storage:\n  database: sqlite:///{db}\nproviders:\n  l: {{type: mock}}\n"
                   "models:\n  - {name: m, targets: [{provider: l, model: m}]}\n")
    out = subprocess.run([sys.executable, "-m", "proxy", "usage", "backfill-rollups", "--config", str(cfg)],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("rebuilt 0 hourly rollup rows")


ZONES = ["UTC", "America/New_York", "Asia/Kolkata", "Pacific/Chatham", "Europe/Berlin"]


async def test_single_days_add_up_to_the_total_in_every_zone(start_proxy, ledger_url):  # noqa: F811
    server = await start_proxy(make_config(storage={"database": ledger_url}))
    url = str(server.make_url(""))
    events = _events(600)
    ledger = open_ledger(ledger_url)
    await ledger.connect()
    try:
        await write_events(ledger, events)
    finally:
        await ledger.close()
    for tz in ZONES:
        zone = ZoneInfo(tz)
        first = date(2026, 10, 29)
        days = [first + timedelta(days=i) for i in range(DAYS - 2)]
        end = days[-1] + timedelta(days=1)
        st, whole, _ = await request(url, "GET", f"/v1/usage/summary?group_by=day&tz={tz}"
                                                 f"&since={first.isoformat()}&until={end.isoformat()}")
        assert st == 200, whole
        assert whole["tz"] == tz and [d["day"] for d in whole["data"]] == [d.isoformat() for d in days]
        singles = []
        for d in days:
            st, one, _ = await request(url, "GET", f"/v1/usage/summary?group_by=model&tz={tz}"
                                                   f"&since={d.isoformat()}T00:00:00&until={d + timedelta(days=1)}")
            assert st == 200, one
            singles.append(one["total"])
            [labelled] = [x for x in whole["data"] if x["day"] == d.isoformat()]
            assert labelled["requests"] == one["total"]["requests"]
        for k in ("requests", "prompt_tokens", "completion_tokens", "errors", "cache_hits", "unpriced_requests"):
            assert sum(s[k] for s in singles) == whole["total"][k], (tz, k)
        assert abs(sum(s["cost"] for s in singles) - whole["total"]["cost"]) < 1e-9
        # Where the offset is whole hours the days are exact: the raw events of the local days.
        lo = datetime.combine(first, datetime.min.time(), zone).timestamp()
        hi = datetime.combine(end, datetime.min.time(), zone).timestamp()
        if tz not in ("Asia/Kolkata", "Pacific/Chatham"):
            assert whole["total"]["requests"] == sum(1 for e in events if lo <= e.ts < hi), tz
        assert whole["total"]["requests"] > 300
        # GraphQL's usageSummary reads the same rollups with the same zone rules.
        _, doc = await gql(url, "query($f: UsageFilter, $tz: String!) { usageSummary(groupBy: DAY, filter: $f, "
                                "tz: $tz) { key requests costUsd } }",
                           {"f": {"since": first.isoformat(), "until": end.isoformat()}, "tz": tz})
        assert [(g["key"], g["requests"]) for g in doc["data"]["usageSummary"]] == \
            [(d["day"], d["requests"]) for d in whole["data"]]
    _, doc = await gql(url, '{ usageSummary(groupBy: DAY, tz: "Mars/Olympus") { key } }')
    assert codes(doc) == ["BAD_USER_INPUT"] and doc["errors"][0]["extensions"]["param"] == "tz"


async def test_summary_parameters(start_proxy, tmp_path):
    server = await start_proxy(make_config(storage={"database": f"sqlite:///{tmp_path}/l.db"}))
    url = str(server.make_url(""))
    st, body, _ = await request(url, "GET", "/v1/usage/summary?tz=Mars/Olympus")
    assert st == 400 and body["error"]["param"] == "tz"
    st, body, _ = await request(url, "GET", "/v1/usage/summary?tz=../../etc/passwd")
    assert st == 400 and body["error"]["param"] == "tz"
    st, body, _ = await request(url, "GET", "/v1/usage/summary?group_by=week")
    assert st == 400 and body["error"]["param"] == "group_by"
    st, body, _ = await request(url, "GET", "/v1/usage/summary?since=yesterday")
    assert st == 400 and body["error"]["param"] == "since"
    st, body, _ = await request(url, "GET", "/v1/usage/summary?group_by=hour&tz=Asia/Kolkata")
    assert st == 200 and body["data"] == [] and body["total"]["requests"] == 0
    assert body["total"]["latency_histogram"] == [0] * 10 and len(body["latency_bounds_ms"]) == 9
    st, body, _ = await request(url, "GET", "/v1/usage/summary?histogram=maybe")
    assert st == 400 and body["error"]["param"] == "histogram"
    st, body, _ = await request(url, "GET", "/v1/usage/summary?histogram=false")
    assert st == 200 and "latency_histogram" not in body["total"] and "latency_bounds_ms" not in body


@pytest.mark.parametrize("tz,expect", [("Asia/Kolkata", "2026-10-29T05:30:00+05:30"),
                                        ("America/New_York", "2026-10-28T20:00:00-04:00")])
async def test_hours_are_labelled_in_the_zone(start_proxy, tmp_path, tz, expect):
    db = f"sqlite:///{tmp_path}/l.db"
    server = await start_proxy(make_config(storage={"database": db}))
    ledger = open_ledger(db)
    await ledger.connect()
    await write_events(ledger, [_event(1, T0 + 86400 + 5)])
    await ledger.close()
    st, body, _ = await request(str(server.make_url("")), "GET", f"/v1/usage/summary?group_by=hour&tz={tz}")
    assert st == 200 and [d["hour"] for d in body["data"]] == [expect]


async def test_a_batch_or_request_is_summed_from_its_indexed_events(start_proxy, tmp_path):
    db = f"sqlite:///{tmp_path}/l.db"
    server = await start_proxy(make_config(storage={"database": db}))
    ledger = open_ledger(db)
    await ledger.connect()
    events = _events(50)
    for e in events[:20]:
        e.batch_id = "batch_1"
    await write_events(ledger, events)
    await ledger.close()
    url = str(server.make_url(""))
    st, body, _ = await request(url, "GET", "/v1/usage/summary?batch_id=batch_1&group_by=model")
    assert st == 200 and body["total"]["requests"] == 20
    assert body["total"]["prompt_tokens"] == sum(e.prompt_tokens for e in events[:20])
    assert {d["model"]: d["requests"] for d in body["data"]} == \
        {m: sum(1 for e in events[:20] if e.model == m) for m in {e.model for e in events[:20]}}
    st, body, _ = await request(url, "GET", "/v1/usage/summary?request_id=r3&group_by=day&tz=Asia/Kolkata")
    assert st == 200 and body["total"]["requests"] == 1 and len(body["data"]) == 1
    st, body, _ = await request(url, "GET", "/v1/usage/summary?batch_id=batch_1&key=nobody")
    assert st == 200 and body["total"]["requests"] == 0
