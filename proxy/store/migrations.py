"""Versioned schema migrations, one list for SQLite and PostgreSQL.

To change the schema, append one `Step` to `STEPS` with the next version number; never edit a step that
has shipped. Statements are plain SQL valid on both databases; `SERIAL_PK` expands to each dialect's
auto-increment primary key. Where the dialects really differ, give `sqlite=`/`postgresql=` instead of `sql=`.
Applied versions are recorded in `schema_version`; each backend runs pending steps in one transaction
under a lock (SQLite `BEGIN IMMEDIATE`, PostgreSQL advisory lock), so replicas starting together are safe.
"""

from __future__ import annotations

from dataclasses import dataclass

SCHEMA_VERSION_DDL = ("CREATE TABLE IF NOT EXISTS schema_version ("
                      "version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")

_TOKENS = {
    "sqlite": {"SERIAL_PK": "INTEGER PRIMARY KEY AUTOINCREMENT"},
    "postgresql": {"SERIAL_PK": "BIGSERIAL PRIMARY KEY"},
}


@dataclass(frozen=True, slots=True)
class Step:
    version: int
    name: str
    sql: tuple[str, ...] = ()
    sqlite: tuple[str, ...] | None = None
    postgresql: tuple[str, ...] | None = None

    def statements(self, dialect: str) -> tuple[str, ...]:
        own = getattr(self, dialect)
        stmts = own if own is not None else self.sql
        out = []
        for s in stmts:
            for token, value in _TOKENS[dialect].items():
                s = s.replace(token, value)
            out.append(s)
        return tuple(out)


def _rollup_ddl(table: str, dims: tuple[str, ...], suffix: str) -> str:
    """One hourly rollup table (migration 4; a later change is a new step, never an edit of this one)."""
    cols = ",\n            ".join(f"{d} TEXT NOT NULL DEFAULT ''" for d in dims)
    sums = ",\n            ".join(f"{m} BIGINT NOT NULL DEFAULT 0" for m in (
        "requests", "errors", "prompt_tokens", "completion_tokens", "cached_tokens", "cost_nanos", "saved_nanos",
        "cache_hits", "unpriced", "estimated"))
    buckets = ", ".join(f"lat_b{i} BIGINT NOT NULL DEFAULT 0" for i in range(10))
    return (f"""CREATE TABLE {table} (
            hour BIGINT NOT NULL,
            {cols},
            {sums},
            latency_ms_sum DOUBLE PRECISION NOT NULL DEFAULT 0,
            {buckets},
            PRIMARY KEY (hour, {', '.join(dims)})){suffix}""")


def _rollups(suffix: str) -> tuple[str, ...]:
    # One row per UTC hour x key x source x model x provider x budget ('' for none: NULLs never conflict,
    # so an upsert on them would add rows instead of adding to one), and two narrower copies of the same
    # sums that the common questions read (by model/provider; by key/source/budget): a 30-day overview
    # then sums thousands of rows, not the full table's hundred thousand. Clustered by hour on SQLite.
    return (
        _rollup_ddl("usage_rollups", ("key_id", "source_id", "model", "provider", "budget_id"), suffix),
        "CREATE INDEX usage_rollups_by_key ON usage_rollups (key_id, hour)",
        _rollup_ddl("usage_rollups_model", ("model", "provider"), suffix),
        _rollup_ddl("usage_rollups_key", ("key_id", "source_id", "budget_id"), suffix),
    )


STEPS: list[Step] = [
    Step(1, "virtual keys and audit log", sql=(
        """CREATE TABLE api_keys (
            id TEXT PRIMARY KEY,
            key_hash TEXT NOT NULL UNIQUE,
            key_prefix TEXT NOT NULL,
            name TEXT NOT NULL DEFAULT '',
            models TEXT,
            rpm INTEGER,
            tpm BIGINT,
            max_concurrency INTEGER,
            budget_id TEXT,
            source_id TEXT,
            source_type TEXT,
            metadata TEXT NOT NULL DEFAULT '{}',
            expires_at DOUBLE PRECISION,
            disabled INTEGER NOT NULL DEFAULT 0,
            revoked_at DOUBLE PRECISION,
            prev_hash TEXT,
            prev_expires_at DOUBLE PRECISION,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX api_keys_prev_hash ON api_keys (prev_hash)",
        "CREATE INDEX api_keys_budget ON api_keys (budget_id)",
        """CREATE TABLE audit_log (
            id SERIAL_PK,
            ts DOUBLE PRECISION NOT NULL,
            action TEXT NOT NULL,
            actor TEXT NOT NULL,
            target TEXT,
            ip TEXT,
            detail TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX audit_log_ts ON audit_log (ts)",
        "CREATE INDEX audit_log_action ON audit_log (action, id)",
        "CREATE INDEX audit_log_actor ON audit_log (actor, id)",
    )),
    Step(2, "usage events and budgets", sql=(
        """CREATE TABLE usage_events (
            id SERIAL_PK,
            request_id TEXT NOT NULL UNIQUE,
            ts DOUBLE PRECISION NOT NULL,
            day TEXT NOT NULL,
            source_type TEXT,
            source_id TEXT,
            team TEXT,
            request_type TEXT NOT NULL,
            model TEXT NOT NULL,
            provider TEXT,
            upstream_model TEXT,
            key_id TEXT,
            budget_id TEXT,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0,
            cost_nanos BIGINT,
            saved_nanos BIGINT NOT NULL DEFAULT 0,
            is_async INTEGER NOT NULL DEFAULT 0,
            cached INTEGER NOT NULL DEFAULT 0,
            batch_id TEXT,
            stream INTEGER NOT NULL DEFAULT 0,
            status INTEGER NOT NULL DEFAULT 0,
            error TEXT,
            latency_ms DOUBLE PRECISION NOT NULL DEFAULT 0,
            ttft_ms DOUBLE PRECISION,
            estimated INTEGER NOT NULL DEFAULT 0)""",
        "CREATE INDEX usage_events_ts ON usage_events (ts)",
        "CREATE INDEX usage_events_key ON usage_events (key_id, id)",
        "CREATE INDEX usage_events_budget ON usage_events (budget_id, ts)",
        "CREATE INDEX usage_events_source ON usage_events (source_id, ts)",
        "CREATE INDEX usage_events_model ON usage_events (model, ts)",
        """CREATE TABLE budgets (
            id TEXT PRIMARY KEY,
            name TEXT NOT NULL DEFAULT '',
            amount_nanos BIGINT NOT NULL,
            period TEXT NOT NULL,
            scope TEXT NOT NULL,
            hard INTEGER NOT NULL DEFAULT 1,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
    )),
    Step(3, "async jobs, webhook deliveries, files, batches and batch lines", sql=(
        """CREATE TABLE jobs (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            endpoint TEXT NOT NULL,
            body TEXT NOT NULL,
            headers TEXT NOT NULL DEFAULT '{}',
            idem_key TEXT,
            idem_hash TEXT,
            webhook_url TEXT,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            started_at DOUBLE PRECISION,
            completed_at DOUBLE PRECISION,
            expires_at DOUBLE PRECISION,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION,
            http_status INTEGER,
            result TEXT,
            error TEXT)""",
        "CREATE UNIQUE INDEX jobs_idem ON jobs (key_id, idem_key)",
        "CREATE INDEX jobs_status ON jobs (status, created_at)",
        """CREATE TABLE webhook_deliveries (
            id TEXT PRIMARY KEY,
            job_id TEXT NOT NULL,
            url TEXT NOT NULL,
            payload TEXT NOT NULL,
            status TEXT NOT NULL,
            attempts INTEGER NOT NULL DEFAULT 0,
            next_at DOUBLE PRECISION NOT NULL,
            lease_until DOUBLE PRECISION,
            last_error TEXT,
            created_at DOUBLE PRECISION NOT NULL,
            updated_at DOUBLE PRECISION NOT NULL)""",
        "CREATE INDEX webhook_deliveries_due ON webhook_deliveries (status, next_at)",
        """CREATE TABLE files (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            filename TEXT NOT NULL,
            purpose TEXT NOT NULL,
            bytes BIGINT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            content TEXT NOT NULL)""",
        "CREATE INDEX files_key ON files (key_id, created_at)",
        """CREATE TABLE batches (
            id TEXT PRIMARY KEY,
            key_id TEXT NOT NULL,
            doc TEXT NOT NULL,
            status TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            next_at DOUBLE PRECISION NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION)""",
        "CREATE INDEX batches_key ON batches (key_id, created_at)",
        "CREATE INDEX batches_status ON batches (status)",
        """CREATE TABLE batch_lines (
            batch_id TEXT NOT NULL,
            custom_id TEXT NOT NULL,
            line_no INTEGER NOT NULL,
            priority INTEGER NOT NULL DEFAULT 0,
            body TEXT NOT NULL,
            state TEXT NOT NULL,
            not_before DOUBLE PRECISION NOT NULL DEFAULT 0,
            lease_owner TEXT,
            lease_until DOUBLE PRECISION,
            request_id TEXT,
            http_status INTEGER,
            output TEXT,
            is_error INTEGER NOT NULL DEFAULT 0,
            prompt_tokens BIGINT NOT NULL DEFAULT 0,
            completion_tokens BIGINT NOT NULL DEFAULT 0,
            cached_tokens BIGINT NOT NULL DEFAULT 0,
            PRIMARY KEY (batch_id, custom_id))""",
        "CREATE INDEX batch_lines_todo ON batch_lines (batch_id, state, priority, line_no)",
        "CREATE INDEX usage_events_batch ON usage_events (batch_id, id)",
        "ALTER TABLE usage_events ADD COLUMN custom_id TEXT",
    )),
    Step(4, "hourly usage rollups", sqlite=_rollups(" WITHOUT ROWID"), postgresql=_rollups("")),
    Step(5, "the ingress of each usage event", sql=(
        "ALTER TABLE usage_events ADD COLUMN ingress TEXT",
    )),
    Step(6, "stored responses (Responses API store: true)", sql=(
        """CREATE TABLE stored_responses (
            tenant TEXT NOT NULL,
            id TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL,
            expires_at DOUBLE PRECISION NOT NULL,
            body TEXT NOT NULL,
            PRIMARY KEY (tenant, id))""",
        "CREATE INDEX stored_responses_expires ON stored_responses (expires_at)",
    )),
    # One row per crossing: the key makes recording idempotent (replicas without a shared counter, retries).
    Step(7, "fired budget alerts", sql=(
        """CREATE TABLE budget_alerts (
            budget_id TEXT NOT NULL,
            scope_value TEXT NOT NULL,
            period_start BIGINT NOT NULL,
            threshold DOUBLE PRECISION NOT NULL,
            spent_nanos BIGINT NOT NULL,
            fired_at DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (budget_id, period_start, scope_value, threshold))""",
    )),
]


def check_steps(steps: list[Step]) -> None:
    """Versions must be 1, 2, 3, ...: a gap or a duplicate is a programming error, caught at start-up."""
    for i, step in enumerate(steps, start=1):
        if step.version != i:
            raise RuntimeError(f"migration {step.name!r} has version {step.version}, expected {i}")


def pending(applied: set[int], dialect: str, steps: list[Step] | None = None) -> list[tuple[Step, tuple[str, ...]]]:
    steps = STEPS if steps is None else steps
    check_steps(steps)
    return [(s, s.statements(dialect)) for s in steps if s.version not in applied]


def latest_version() -> int:
    return STEPS[-1].version if STEPS else 0
