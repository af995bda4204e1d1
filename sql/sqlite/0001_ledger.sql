-- SQLite twin of sql/0001_ledger.sql: same tables, same rollups.
-- Times are integer microseconds since the Unix epoch (UTC): exact, ordered, and cheap to
-- truncate to an hour or a day with integer arithmetic. tags, extra and headers are JSON
-- text; booleans are 0/1.
CREATE TABLE IF NOT EXISTS usage_records (
    request_id         TEXT PRIMARY KEY,
    ts                 INTEGER NOT NULL,
    key_id             TEXT NOT NULL,
    model_requested    TEXT NOT NULL,
    model              TEXT NOT NULL,
    provider           TEXT NOT NULL,
    region             TEXT NOT NULL,
    status             INTEGER NOT NULL,
    finish_reason      TEXT,
    error_code         TEXT,
    prompt_tokens      INTEGER NOT NULL,
    completion_tokens  INTEGER NOT NULL,
    cached_tokens      INTEGER NOT NULL,
    cache_write_tokens INTEGER NOT NULL,
    cost_nusd          INTEGER NOT NULL,
    savings_nusd       INTEGER NOT NULL,
    latency_ms         REAL NOT NULL,
    ttft_ms            REAL,
    stream             INTEGER NOT NULL,
    cache_hit          INTEGER NOT NULL,
    attempts           INTEGER NOT NULL,
    estimated          INTEGER NOT NULL,
    user_id            TEXT,
    trace_id           TEXT,
    tags               TEXT NOT NULL,
    extra              TEXT NOT NULL,
    headers            TEXT NOT NULL
);

CREATE INDEX IF NOT EXISTS usage_records_ts ON usage_records (ts);
CREATE INDEX IF NOT EXISTS usage_records_key_ts ON usage_records (key_id, ts);

CREATE TABLE IF NOT EXISTS usage_hourly (
    key_id            TEXT NOT NULL,
    hour              INTEGER NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    status            INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nusd         INTEGER NOT NULL,
    savings_nusd      INTEGER NOT NULL,
    cached_requests   INTEGER NOT NULL,
    PRIMARY KEY (key_id, hour, model, provider, status)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS usage_org_hourly (
    hour              INTEGER NOT NULL,
    model             TEXT NOT NULL,
    provider          TEXT NOT NULL,
    status            INTEGER NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nusd         INTEGER NOT NULL,
    savings_nusd      INTEGER NOT NULL,
    cached_requests   INTEGER NOT NULL,
    PRIMARY KEY (hour, model, provider, status)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS usage_key_hourly (
    hour              INTEGER NOT NULL,
    key_id            TEXT NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nusd         INTEGER NOT NULL,
    savings_nusd      INTEGER NOT NULL,
    cached_requests   INTEGER NOT NULL,
    PRIMARY KEY (hour, key_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS usage_key_daily (
    day               INTEGER NOT NULL,
    key_id            TEXT NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nusd         INTEGER NOT NULL,
    savings_nusd      INTEGER NOT NULL,
    cached_requests   INTEGER NOT NULL,
    PRIMARY KEY (day, key_id)
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS usage_dim_hourly (
    dim               TEXT NOT NULL,
    hour              INTEGER NOT NULL,
    value             TEXT NOT NULL,
    requests          INTEGER NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    cached_tokens     INTEGER NOT NULL,
    cost_nusd         INTEGER NOT NULL,
    savings_nusd      INTEGER NOT NULL,
    cached_requests   INTEGER NOT NULL,
    PRIMARY KEY (dim, hour, value)
) WITHOUT ROWID;
